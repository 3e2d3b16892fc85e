"""Which modules a host snapshot (linear memory plus exported globals) restores exactly.

A mutable global that a module does not export is invisible to the host: a snapshot cannot
save it and a restore leaves it at its initial value. One such global is harmless, LLVM's
shadow-stack pointer (``__stack_pointer``), because it is back at its initial value between
calls. Any other (a counter in a WAT module, all of AssemblyScript's state) makes a restore
silently wrong, so such a module counts as unrecoverable unless it has its own
``qh_snapshot``/``qh_restore``; after a worker crash its ``on_error`` policy applies.
"""

from __future__ import annotations

import wasmtime

from qhybrid.runtime.wasm_pool._abi import _leb, internal_mutable_globals

#: The one non-exported mutable global a host snapshot may miss.
SHADOW_STACK = "__stack_pointer"


def global_names(wasm: bytes) -> dict[int, str]:
    """Global index -> name, from the ``name`` custom section (subsection 7), if any."""
    if not wasm.startswith(b"\0asm"):
        wasm = bytes(wasmtime.wat2wasm(wasm.decode("utf-8")))
    pos = 8
    names: dict[int, str] = {}
    while pos < len(wasm):
        section = wasm[pos]
        size, pos = _leb(wasm, pos + 1)
        end = pos + size
        if section == 0:
            n, p = _leb(wasm, pos)
            if wasm[p : p + n] == b"name":
                p += n
                while p < end:
                    sub = wasm[p]
                    sub_size, p = _leb(wasm, p + 1)
                    sub_end = p + sub_size
                    if sub == 7:
                        count, q = _leb(wasm, p)
                        for _ in range(count):
                            index, q = _leb(wasm, q)
                            length, q = _leb(wasm, q)
                            names[index] = wasm[q : q + length].decode("utf-8", "replace")
                            q += length
                    p = sub_end
        pos = end
    return names


def host_snapshot_exact(wasm: bytes) -> bool:
    """Whether memory plus exported globals hold all of the module's state (see above)."""
    hidden = internal_mutable_globals(wasm)
    if hidden == 0:
        return True
    return hidden == 1 and SHADOW_STACK in global_names(wasm).values()
