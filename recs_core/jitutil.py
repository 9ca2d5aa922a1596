"""Low-level helpers for Numba kernels."""

from __future__ import annotations

import sys

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LITTLE_ENDIAN = sys.byteorder == "little"


@intrinsic
def load_u64_le(typingctx, arr, idx):  # noqa: ANN001, ANN201
    """uint64 from the 8 bytes arr[idx:idx+8] of a uint8 array, at any alignment, in the
    machine's byte order (callers check LITTLE_ENDIAN). No bounds check: the caller ensures
    idx + 8 <= len(arr)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8):
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return types.uint64(arr, types.intp), codegen
