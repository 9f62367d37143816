"""WarpCTC captcha recogniser on MindSpore."""
