"""Integer dot products of screening codes: one tile of 16 classes against 1 or 4 queries.

Codes are int8, laid out for AVX-512 VNNI: ``blocks`` (n_blocks, n_quads, 64), where byte 4 * j + u of
``blocks[g, t]`` is the code of class 16 * g + j at dimension 4 * t + u. Queries are uint8 (the int8 code
plus 128) packed four to an int32: ``quads`` (N, n_quads). A tile writes, for each query i of the tile and
class j of block g, the exact int32 sum over the dimensions of (query byte) * (class code) to ``out[i, j]``.

With AVX-512 VNNI the tile is one ``vpdpbusd`` per (query, four dimensions); with AVX2 only, four
``vpmaddwd`` on the codes widened to int16; both written in LLVM IR (Numba emits neither by itself). Elsewhere
a plain Numba loop computes the same integers. All are exact: the sums fit int32 for at most SCREEN_MAX_QUADS
quads (255 * 127 * 4 * SCREEN_MAX_QUADS < 2**31)."""
from __future__ import annotations

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)
_V16 = ir.VectorType(_I32, 16)


def host_has_vnni() -> bool:
    """Whether this CPU runs AVX-512 VNNI (vpdpbusd on 512-bit registers)."""
    features = binding.get_host_cpu_features()
    return bool(features.get("avx512vnni")) and bool(features.get("avx512bw"))


def host_has_avx2() -> bool:
    """Whether this CPU runs AVX2 (vpmaddwd on 256-bit registers)."""
    return bool(binding.get_host_cpu_features().get("avx2"))


_B64 = ir.VectorType(ir.IntType(8), 64)
_W16 = ir.VectorType(ir.IntType(16), 16)
_V8 = ir.VectorType(_I32, 8)


class _Vnni:
    """A (query, block) pair's sums in one int32 x 16 register, one vpdpbusd per quad."""
    accumulators = 1
    acc_type = _V16
    blocks_per_pass = 0     # all of a tile's blocks in one loop

    def __init__(self, builder):
        self.builder = builder
        self.dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]),
                                                  "llvm.x86.avx512.vpdpbusd.512")

    def codes(self, code):
        return [self.builder.bitcast(code, _V16)]

    def query(self, quad):
        splat = self.builder.insert_element(ir.Constant(_V16, None), quad, ir.Constant(_I32, 0))
        return self.builder.shuffle_vector(splat, ir.Constant(_V16, None), ir.Constant(_V16, [0] * 16))

    def step(self, acc, codes, query):
        return self.builder.call(self.dot, [acc, query, codes])

    def sums(self, accs):
        return accs[0]


class _Avx2:
    """A (query, block) pair's sums in four int32 x 8 registers, one per four classes: the codes widened to
    int16 and vpmaddwd against the query's four bytes (no saturation: 255 * 127 * 2 fits int32), the pairs of
    dimensions added at the end."""
    accumulators = 4
    acc_type = _V8
    blocks_per_pass = 1     # a block's four accumulators per query: 16 of AVX2's 16 registers at 4 queries

    def __init__(self, builder):
        self.builder = builder
        self.madd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_W16, _W16]),
                                                   "llvm.x86.avx2.pmadd.wd")

    def codes(self, code):
        b = self.builder
        return [b.sext(b.shuffle_vector(code, code, ir.Constant(_V16, list(range(16 * p, 16 * p + 16)))), _W16)
                for p in range(4)]

    def query(self, quad):
        b = self.builder
        four = b.zext(b.bitcast(quad, ir.VectorType(ir.IntType(8), 4)), ir.VectorType(ir.IntType(16), 4))
        return b.shuffle_vector(four, four, ir.Constant(_V16, [0, 1, 2, 3] * 4))

    def step(self, acc, codes, query):
        return self.builder.add(acc, self.builder.call(self.madd, [codes, query]))

    def sums(self, accs):
        b = self.builder
        evens, odds = ir.Constant(_V8, list(range(0, 16, 2))), ir.Constant(_V8, list(range(1, 16, 2)))
        halves = [b.add(b.shuffle_vector(x, y, evens), b.shuffle_vector(x, y, odds))
                  for x, y in (accs[0:2], accs[2:4])]
        return b.shuffle_vector(halves[0], halves[1], ir.Constant(_V16, list(range(16))))


def _make_tile(n_queries: int, n_blocks: int, isa):
    """An intrinsic tile(blocks, g, quads, q0, out): out[i * n_blocks + a, :16] = the int32 dot products of
    block g + a with query q0 + i, for i < n_queries and a < n_blocks (see the module docstring), on isa
    (_Vnni or _Avx2): as many independent accumulator chains as fit its registers, so that the instructions'
    latency is hidden (isa.blocks_per_pass blocks per loop over the quads)."""

    @intrinsic
    def tile(typingctx, blocks, g, quads, q0, out):
        sig = types.void(blocks, g, quads, q0, out)

        def codegen(context, builder, signature, args):
            arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 4)]
            per_pass = min(n_blocks, isa.blocks_per_pass or n_blocks)
            for first in range(0, n_blocks, per_pass):
                _tile_pass(builder, isa(builder), arrays, args[1], args[3], n_queries, n_blocks,
                           range(first, first + per_pass))
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _tile_pass(builder, ops, arrays, g_val, q0_val, n_queries: int, n_blocks: int, tile_blocks: range):
    """Emit one loop over the quads that sums the tile's blocks `tile_blocks` with its queries and stores them
    (see _make_tile)."""
    code_arr, quad_arr, out_arr = arrays
    n_quads = builder.extract_value(code_arr.shape, 1)
    row_len = builder.extract_value(quad_arr.shape, 1)
    vec_ptr = builder.bitcast(code_arr.data, _B64.as_pointer())
    first_vec = builder.mul(g_val, n_quads)
    quad_ptr = builder.bitcast(quad_arr.data, _I32.as_pointer())
    rows = [builder.mul(builder.add(q0_val, ir.Constant(q0_val.type, i)), row_len) for i in range(n_queries)]
    block_offsets = [builder.mul(ir.Constant(n_quads.type, a), n_quads) for a in tile_blocks]
    entry = builder.basic_block
    loop = builder.append_basic_block("tile_loop")
    done = builder.append_basic_block("tile_done")
    builder.branch(loop)
    builder.position_at_end(loop)
    t = builder.phi(n_quads.type)
    t.add_incoming(ir.Constant(n_quads.type, 0), entry)
    accs = []
    for _ in range(n_queries * len(tile_blocks) * ops.accumulators):
        acc = builder.phi(ops.acc_type)
        acc.add_incoming(ir.Constant(ops.acc_type, None), entry)
        accs.append(acc)
    codes = [ops.codes(builder.load(builder.gep(vec_ptr, [builder.add(builder.add(first_vec, t), block)]), align=1))
             for block in block_offsets]
    news = []
    for i in range(n_queries):
        query = ops.query(builder.load(builder.gep(quad_ptr, [builder.add(rows[i], t)])))
        for parts in codes:
            for part in parts:
                acc = accs[len(news)]
                new = ops.step(acc, part, query)
                acc.add_incoming(new, loop)
                news.append(new)
    t_next = builder.add(t, ir.Constant(t.type, 1))
    t.add_incoming(t_next, loop)
    builder.cbranch(builder.icmp_signed("<", t_next, n_quads), loop, done)
    builder.position_at_end(done)
    out_ptr = builder.bitcast(out_arr.data, _V16.as_pointer())
    n = ops.accumulators
    for i in range(n_queries):
        for j, a in enumerate(tile_blocks):
            first = (i * len(tile_blocks) + j) * n
            builder.store(ops.sums(news[first:first + n]), builder.gep(out_ptr, [ir.Constant(_I32, i * n_blocks + a)]),
                          align=4)


_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, 16)


def _make_scores(n_queries: int, n_blocks: int, with_margin: bool = False):
    """An intrinsic scores(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask): for query q0 + i
    and block g + a (row t = i * n_blocks + a of acc), the approximate scores of the block's 16 classes c,
    ``qscale[q0 + i] * (scale[c] * float32(acc[t]) - corr[c]) + shift[c] + qconst[q0 + i]``, to vals[t], and
    mask[t] = the bits of the classes whose score is >= worst[i]. Plain LLVM vector operations in this order
    (no fused multiply-add), so NumPy's float32 arithmetic gives the same values; legal on any CPU.
    with_margin: per-class A, B and per-query qa, qb after qconst; the mask then compares score + qa[q] * A[c]
    + qb[q] * B[c] with worst (vals still get the score)."""
    n_args = 15 if with_margin else 11

    def codegen(context, builder, signature, values):
        arrays = {i: context.make_array(signature.args[i])(context, builder, values[i])
                  for i in range(n_args) if i not in (1, n_args - 4)}
        acc_a, scale_a, corr_a, shift_a, qs_a, qc_a = (arrays[i] for i in (0, 2, 3, 4, 5, 6))
        worst_a, vals_a, mask_a = (arrays[i] for i in (n_args - 3, n_args - 2, n_args - 1))
        g_val, q0_val = values[1], values[n_args - 4]
        acc_ptr = builder.bitcast(acc_a.data, _V16.as_pointer())
        vals_ptr = builder.bitcast(vals_a.data, _VF.as_pointer())
        mask_ptr = builder.bitcast(mask_a.data, _I32.as_pointer())

        def row_vector(arr, a):
            ptr = builder.bitcast(arr.data, _F32.as_pointer())
            first = builder.mul(builder.add(g_val, ir.Constant(g_val.type, a)), ir.Constant(g_val.type, 16))
            return builder.load(builder.bitcast(builder.gep(ptr, [first]), _VF.as_pointer()), align=4)

        def splat(arr, index):
            value = builder.load(builder.gep(builder.bitcast(arr.data, _F32.as_pointer()), [index]))
            vec = builder.insert_element(ir.Constant(_VF, None), value, ir.Constant(_I32, 0))
            return builder.shuffle_vector(vec, ir.Constant(_VF, None), ir.Constant(_V16, [0] * 16))

        per_class = (scale_a, corr_a, shift_a) + ((arrays[7], arrays[8]) if with_margin else ())
        rows = [tuple(row_vector(arr, a) for arr in per_class) for a in range(n_blocks)]
        for i in range(n_queries):
            q = builder.add(q0_val, ir.Constant(q0_val.type, i))
            qs, qc, w = splat(qs_a, q), splat(qc_a, q), splat(worst_a, ir.Constant(_I32, i))
            if with_margin:
                qa, qb = splat(arrays[9], q), splat(arrays[10], q)
            for a, row in enumerate(rows):
                t = i * n_blocks + a
                acc = builder.load(builder.gep(acc_ptr, [ir.Constant(_I32, t)]), align=4)
                v = builder.fsub(builder.fmul(row[0], builder.sitofp(acc, _VF)), row[1])
                v = builder.fadd(builder.fadd(builder.fmul(qs, v), row[2]), qc)
                builder.store(v, builder.gep(vals_ptr, [ir.Constant(_I32, t)]), align=4)
                if with_margin:
                    v = builder.fadd(v, builder.fadd(builder.fmul(qa, row[3]), builder.fmul(qb, row[4])))
                bits = builder.bitcast(builder.fcmp_ordered(">=", v, w), ir.IntType(16))
                builder.store(builder.zext(bits, _I32), builder.gep(mask_ptr, [ir.Constant(_I32, t)]))
        return context.get_dummy_value()

    if with_margin:
        @intrinsic
        def scores(typingctx, acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask):
            sig = types.void(acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask)
            return sig, codegen
    else:
        @intrinsic
        def scores(typingctx, acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask):
            return types.void(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask), codegen

    return scores


_SHAPES = ((1, 1), (1, 4), (4, 1), (4, 2))
_s11, _s14, _s41, _s42 = (_make_scores(*shape) for shape in _SHAPES)
_m11, _m14, _m41, _m42 = (_make_scores(*shape, with_margin=True) for shape in _SHAPES)


@njit(inline="always")
def block_scores(n_queries, n_blocks, acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask):
    """The approximate scores and the threshold masks of a tile's acc (see _make_scores); (n_queries,
    n_blocks) in TILES. scale / corr / shift: float32 per class slot; arrays C-contiguous."""
    if n_queries == 1:
        if n_blocks == 1:
            _s11(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask)
        else:
            _s14(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask)
    elif n_blocks == 1:
        _s41(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask)
    else:
        _s42(acc, g, scale, corr, shift, qscale, qconst, q0, worst, vals, mask)


@njit(inline="always")
def block_upper(n_queries, n_blocks, acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals,
                mask):
    """block_scores whose mask compares score + qa[q] * A[c] + qb[q] * B[c] with worst (_make_scores)."""
    if n_queries == 1:
        if n_blocks == 1:
            _m11(acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask)
        else:
            _m14(acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask)
    elif n_blocks == 1:
        _m41(acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask)
    else:
        _m42(acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q0, worst, vals, mask)


@njit(inline="always")
def generic_tile(blocks, g, quads, q0, n_queries, n_blocks, out):
    """The tile in plain Numba (any CPU): the same int32 results as the VNNI tile."""
    n_quads = blocks.shape[1]
    for i in range(n_queries):
        qbytes = quads[q0 + i].view(np.uint8)
        for a in range(n_blocks):
            for j in range(16):
                acc = np.int32(0)
                for t in range(n_quads):
                    for u in range(4):
                        acc += np.int32(qbytes[4 * t + u]) * np.int32(blocks[g + a, t, 4 * j + u])
                out[i * n_blocks + a, j] = acc


TILES = ((1, 1), (1, 4), (4, 1), (4, 2))   # (queries, blocks) shapes the kernels use

if host_has_vnni() or host_has_avx2():
    ISA = _Vnni if host_has_vnni() else _Avx2
    _q1b1, _q1b4, _q4b1, _q4b2 = (_make_tile(nq, nb, ISA) for nq, nb in TILES)

    @njit(inline="always")
    def tile(n_queries, n_blocks, blocks, g, quads, q0, out):
        """out[i * n_blocks + a] = dot products of block g + a with query q0 + i; (n_queries, n_blocks) in TILES."""
        if n_queries == 1:
            if n_blocks == 1:
                _q1b1(blocks, g, quads, q0, out)
            else:
                _q1b4(blocks, g, quads, q0, out)
        elif n_blocks == 1:
            _q4b1(blocks, g, quads, q0, out)
        else:
            _q4b2(blocks, g, quads, q0, out)

    KIND = "avx512-vnni" if ISA is _Vnni else "avx2"
else:
    @njit(inline="always")
    def tile(n_queries, n_blocks, blocks, g, quads, q0, out):
        """out[i * n_blocks + a] = dot products of block g + a with query q0 + i; (n_queries, n_blocks) in TILES."""
        generic_tile(blocks, g, quads, q0, n_queries, n_blocks, out)

    KIND = "generic"
