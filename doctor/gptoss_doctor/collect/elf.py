"""The shared libraries an ELF file links (DT_NEEDED), read from its section headers without
loading it: which libcudart a vLLM build needs says which CUDA major it was built for."""

from __future__ import annotations

import struct

SHT_DYNAMIC = 6
DT_NULL, DT_NEEDED = 0, 1


def needed_libraries(path: str) -> list[str] | None:
    """The DT_NEEDED names of a 64-bit ELF file; None when it is not one (or is truncated)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
                return None
            e = "<" if head[5] == 1 else ">"
            (shoff,) = struct.unpack_from(e + "Q", head, 0x28)
            shentsize, shnum = struct.unpack_from(e + "HH", head, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
            sections = [struct.unpack_from(e + "IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
            dynamic = next((s for s in sections if s[1] == SHT_DYNAMIC), None)
            if dynamic is None or dynamic[6] >= len(sections):
                return []
            strtab = sections[dynamic[6]]
            f.seek(dynamic[4])
            entries = f.read(dynamic[5])
            f.seek(strtab[4])
            strings = f.read(strtab[5])
    except (OSError, struct.error):
        return None
    out = []
    for i in range(0, len(entries) - 15, 16):
        tag, val = struct.unpack_from(e + "qQ", entries, i)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED and val < len(strings):
            out.append(strings[val:strings.find(b"\0", val)].decode("utf-8", "replace"))
    return out
