"""Read an Ascend HCCL rank table: which rank runs on which device of which server.

Two layouts are accepted, as written by MindSpore's ``hccl_tools.py`` and by the cluster tools:

* version 1.0 (and later, e.g. 1.2): ``{"server_list": [{"server_id": ..., "device":
  [{"device_id": "0", "device_ip": ..., "rank_id": "0"}, ...]}, ...]}``
* the older ``group_list`` layout: ``{"group_list": [{"instance_list": [{"rank_id": "0",
  "server_id": ..., "devices": [{"device_id": "0", "device_ip": ...}]}, ...]}]}``

Numbers may be JSON numbers or strings (the tools write strings). Only the standard library is
used, so ``scripts/run_distribute_train.sh`` can run this file without MindSpore installed::

    python tools/hccl_rank_table.py RANK_TABLE_FILE [--server_id ID]

prints ``rank_size <N>`` and then one ``<rank_id> <device_id>`` line per rank of this server,
ordered by rank; any problem is a one-line message on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional


@dataclass(frozen=True)
class RankEntry:
    rank_id: int
    device_id: int
    server_id: str


class RankTableError(ValueError):
    """A rank table that cannot be used; the message names the file."""


def _as_index(value: Any, what: str, where: str, source: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise RankTableError(f"{source}: {where}: '{what}' must be a non-negative integer, got {value!r}")


def _list(value: Any, what: str, source: str) -> list:
    if not isinstance(value, list):
        raise RankTableError(f"{source}: '{what}' must be a list, got {type(value).__name__}")
    return value


def _entries_server_list(table: dict, source: str) -> List[RankEntry]:
    entries = []
    for s, server in enumerate(_list(table["server_list"], "server_list", source)):
        if not isinstance(server, dict):
            raise RankTableError(f"{source}: server_list[{s}] must be an object")
        server_id = str(server.get("server_id", s))
        for d, device in enumerate(_list(server.get("device", []), f"server_list[{s}].device", source)):
            where = f"server_list[{s}].device[{d}]"
            if not isinstance(device, dict):
                raise RankTableError(f"{source}: {where} must be an object")
            entries.append(RankEntry(_as_index(device.get("rank_id"), "rank_id", where, source),
                                     _as_index(device.get("device_id"), "device_id", where, source), server_id))
    return entries


def _entries_group_list(table: dict, source: str) -> List[RankEntry]:
    entries = []
    for g, group in enumerate(_list(table["group_list"], "group_list", source)):
        if not isinstance(group, dict):
            raise RankTableError(f"{source}: group_list[{g}] must be an object")
        for i, inst in enumerate(_list(group.get("instance_list", []), f"group_list[{g}].instance_list", source)):
            where = f"group_list[{g}].instance_list[{i}]"
            if not isinstance(inst, dict):
                raise RankTableError(f"{source}: {where} must be an object")
            devices = _list(inst.get("devices", []), f"{where}.devices", source)
            if len(devices) != 1 or not isinstance(devices[0], dict):
                raise RankTableError(f"{source}: {where}: 'devices' must hold exactly one device")
            entries.append(RankEntry(_as_index(inst.get("rank_id"), "rank_id", where, source),
                                     _as_index(devices[0].get("device_id"), "device_id", f"{where}.devices[0]",
                                               source),
                                     str(inst.get("server_id", ""))))
    return entries


def read_rank_table(path: str) -> List[RankEntry]:
    """Every rank of the table, ordered by rank id; RankTableError on any problem."""
    source = f"rank table {path}"
    if not os.path.exists(path):
        raise RankTableError(f"{source}: does not exist")
    if not os.path.isfile(path):
        raise RankTableError(f"{source}: is not a file")
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except json.JSONDecodeError as err:
        raise RankTableError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RankTableError(f"{source}: cannot be read ({err})") from None
    if not isinstance(table, dict):
        raise RankTableError(f"{source}: must be a JSON object with 'server_list' (or 'group_list')")
    if "server_list" in table:
        entries = _entries_server_list(table, source)
    elif "group_list" in table:
        entries = _entries_group_list(table, source)
    else:
        raise RankTableError(f"{source}: has neither 'server_list' (rank table 1.0) nor 'group_list'")
    if not entries:
        raise RankTableError(f"{source}: lists no devices")
    entries.sort(key=lambda e: e.rank_id)
    ranks = [e.rank_id for e in entries]
    if ranks != list(range(len(entries))):
        raise RankTableError(f"{source}: rank ids must be 0..{len(entries) - 1}, each once; got {ranks}")
    seen = set()
    for e in entries:
        if (e.server_id, e.device_id) in seen:
            raise RankTableError(f"{source}: device {e.device_id} of server {e.server_id} is listed twice")
        seen.add((e.server_id, e.device_id))
    return entries


def local_ranks(entries: List[RankEntry], server_id: Optional[str], source: str) -> List[RankEntry]:
    """The ranks this machine runs: all of them for a one-server table, else those of ``server_id``."""
    servers = list(dict.fromkeys(e.server_id for e in entries))
    if server_id:
        if server_id not in servers:
            raise RankTableError(f"{source}: has no server '{server_id}' (servers: {', '.join(servers)})")
        return [e for e in entries if e.server_id == server_id]
    if len(servers) > 1:
        raise RankTableError(f"{source}: lists {len(servers)} servers ({', '.join(servers)}); set SERVER_ID to "
                             f"this machine's server_id and run the launcher on every server")
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Print the ranks of an HCCL rank table that run on this server.")
    parser.add_argument("rank_table")
    parser.add_argument("--server_id", default=None, help="this machine's server_id (needed for multi-server tables)")
    args = parser.parse_args(argv)
    try:
        entries = read_rank_table(args.rank_table)
        mine = local_ranks(entries, args.server_id, f"rank table {args.rank_table}")
    except RankTableError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"rank_size {len(entries)}")
    for e in mine:
        print(f"{e.rank_id} {e.device_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
