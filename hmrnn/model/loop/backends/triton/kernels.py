"""The Triton kernels of the GPU step backend: the six functions of ``cpu/csrc/hmlstm_step.c``,
one program per block of ``BM`` rows, each row's columns in one block of a power of two.

A matrix field is three arguments: its base pointer (step 0, row 0), its row stride and
its step stride (0: every step the same; a vector has row stride 0 too); a row's elements
are adjacent. ``t``, the step, comes at launch, first. An absent field is marked by a
``tl.constexpr`` flag (its pointer is then never read). The slope (its half in the
backward kernel) comes as a pointer to one float, read when the kernel runs, so that a
CUDA graph of the loop replays with the slope of the moment. The math is float32, as the
inputs and outputs are.

The helpers avoid calling ``triton.language``'s own jitted functions (``tl.sum``,
``tl.sigmoid``): where triton was imported before ``TRITON_INTERPRET=1`` was set, those
are compiled-mode functions that an interpreted kernel cannot call; the builtins, and
``tl.reduce`` with triton's sum combiner (which the interpreter recognises and does not
call), work either way.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


# triton's own combiner where it has one: the interpreter sums with numpy when it sees it
# (and never calls it), but calls any other combiner element by element, in Python
_SUM = getattr(tl.standard, "_sum_combine", None) or _add


@triton.jit
def _rowsum(x):
    """Sum over axis 1 of a ``(BM, B)`` tile."""
    return tl.reduce(x, 1, _SUM)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    """tanh as the C step computes it: Cephes' polynomial for |x| < 0.625, else from exp."""
    ax = tl.abs(x)
    z = x * x
    small = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
              + 1.33314422036e-1) * z - 3.33332819422e-1) * z * x + x
    big = 1.0 - 2.0 / (tl.exp(2.0 * ax) + 1.0)
    big = tl.where(x < 0.0, -big, big)
    return tl.where(ax < 0.625, small, big)


@triton.jit
def _tile(ptr, ts, rs, T, r, col0, c):
    """Pointers of the ``(BM, B)`` tile of rows ``r``, columns ``col0 + c``, at step ``T``."""
    return ptr + T * ts + r[:, None] * rs + (col0 + c)[None, :]


@triton.jit
def _col(ptr, ts, rs, T, r, col0):
    """Pointers of column ``col0`` of rows ``r`` at step ``T``: ``(BM,)``."""
    return ptr + T * ts + r * rs + col0


@triton.jit
def _stats(x, mask, D, eps):
    """Mean and ``1/sqrt(var + eps)`` of each row of ``x`` over its ``D`` columns (biased
    variance, two passes, as torch's layer norm)."""
    mean = _rowsum(tl.where(mask, x, 0.0)) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(_rowsum(xc * xc) / D + eps)
    return mean, rstd


@triton.jit
def _ln_backward(gy, x, mean, rstd, w, mask, D):
    """dL/dx of ``y = LN(x) w + b`` from ``gy = dL/dy`` (the C step's hm_ln_backward)."""
    g = tl.where(mask, gy * w[None, :], 0.0)
    xhat = (x - mean[:, None]) * rstd[:, None]
    a = _rowsum(g) / D
    b = _rowsum(tl.where(mask, g * xhat, 0.0)) / D
    return rstd[:, None] * (g - a[:, None] - xhat * b[:, None])


@triton.jit
def _rows(t, N, BM: tl.constexpr):
    """This program's rows (int64), their mask, and the step as int64."""
    r = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    return r, r < N, t.to(tl.int64)


@triton.jit(do_not_specialize=["t"])
def hm_forward(
    t,
    act, act_t, act_r, hp_p, hp_t, hp_r, cp_p, cp_t, cp_r, zp_p, zp_t, zp_r,
    zb_p, zb_t, zb_r, h_p, h_t, h_r, c_p, c_t, c_r, z_p, z_t, z_r, tc_p, tc_t, tc_r,
    u_p, u_t, u_r, bin_p, bin_t, bin_r, d_p, d_t, d_r, zd_p, zd_t, zd_r,
    st_p, st_t, st_r, lnw_p, lnb_p,
    N, H, slope_p, eps,
    HAS_Z: tl.constexpr, SOFT: tl.constexpr, BELOW: tl.constexpr, LN: tl.constexpr,
    DIFF: tl.constexpr, ZDIFF: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BH)
    cm = c < H
    m = rm[:, None] & cm[None, :]
    zp = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
    not_prev = 1.0 - zp
    if BELOW:  # the mixing coefficients of Eq. 2-3 (aten.py: _mix)
        update = not_prev * tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        copy = not_prev - update
        not_copy = update + zp
    else:  # the bottom layer: UPDATE or FLUSH, never COPY
        update = not_prev
        copy = zp * 0.0
        not_copy = copy + 1.0
    f = _sigmoid(tl.load(_tile(act, act_t, act_r, T, r, 0, c), mask=m, other=0.0))
    i = _sigmoid(tl.load(_tile(act, act_t, act_r, T, r, H, c), mask=m, other=0.0))
    o = _sigmoid(tl.load(_tile(act, act_t, act_r, T, r, 2 * H, c), mask=m, other=0.0))
    g = _tanh(tl.load(_tile(act, act_t, act_r, T, r, 3 * H, c), mask=m, other=0.0))
    tl.store(_tile(act, act_t, act_r, T, r, 0, c), f, mask=m)
    tl.store(_tile(act, act_t, act_r, T, r, H, c), i, mask=m)
    tl.store(_tile(act, act_t, act_r, T, r, 2 * H, c), o, mask=m)
    tl.store(_tile(act, act_t, act_r, T, r, 3 * H, c), g, mask=m)
    hp = tl.load(_tile(hp_p, hp_t, hp_r, T, r, 0, c), mask=m, other=0.0)
    cp = tl.load(_tile(cp_p, cp_t, cp_r, T, r, 0, c), mask=m, other=0.0)
    ig = i * g
    cn = cp * (copy[:, None] + update[:, None] * f) + ig * not_copy[:, None]  # Eq. 2
    tl.store(_tile(c_p, c_t, c_r, T, r, 0, c), cn, mask=m)
    if LN:
        mean, rstd = _stats(cn, m, H, eps)
        w = tl.load(lnw_p + c, mask=cm, other=0.0)
        b = tl.load(lnb_p + c, mask=cm, other=0.0)
        tc = _tanh((cn - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :])
        tl.store(_col(st_p, st_t, st_r, T, r, 0), mean, mask=rm)
        tl.store(_col(st_p, st_t, st_r, T, r, 1), rstd, mask=rm)
    else:
        tc = _tanh(cn)
    tl.store(_tile(tc_p, tc_t, tc_r, T, r, 0, c), tc, mask=m)
    oh = o * tc
    if BELOW:  # Eq. 3 (a constexpr branch, not a select)  # noqa: SIM108
        h = hp * copy[:, None] + oh * not_copy[:, None]
    else:
        h = oh
    tl.store(_tile(h_p, h_t, h_r, T, r, 0, c), h, mask=m)
    if DIFF:  # what COPY's coefficient multiplies, for the backward step
        tl.store(_tile(d_p, d_t, d_r, T, r, 0, c), oh - hp, mask=m)
        tl.store(_tile(d_p, d_t, d_r, T, r, H, c), ig - cp, mask=m)
    if HAS_Z:
        half = 0.5 * tl.load(slope_p)  # read at launch: a replayed CUDA graph sees a new slope
        u = tl.load(_col(act, act_t, act_r, T, r, 4 * H), mask=rm, other=0.0) * half + 0.5
        if SOFT:
            zbin = tl.where(u < 0.0, 0.0, tl.where(u > 1.0, 1.0, u))  # Eq. 10
            tl.store(_col(act, act_t, act_r, T, r, 4 * H), zbin, mask=rm)
        else:
            zbin = tl.where(u > 0.5, 1.0, 0.0)
        tl.store(_col(u_p, u_t, u_r, T, r, 0), u, mask=rm)
        tl.store(_col(bin_p, bin_t, bin_r, T, r, 0), zbin, mask=rm)
        if BELOW:  # Eq. 8-9  # noqa: SIM108
            zn = zp * copy + zbin * not_copy
        else:
            zn = zbin
        tl.store(_col(z_p, z_t, z_r, T, r, 0), zn, mask=rm)
        if ZDIFF:
            tl.store(_col(zd_p, zd_t, zd_r, T, r, 0), zbin - zp, mask=rm)


@triton.jit(do_not_specialize=["t"])
def hm_gather(
    t,
    x_p, x_t, x_r, hp_p, hp_t, hp_r, ha_p, ha_t, ha_r, zp_p, zp_t, zp_r,
    hb_p, hb_t, hb_r, zb_p, zb_t, zb_r,
    N, H, Ha, Hb,
    ABOVE: tl.constexpr, BELOW: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BK)
    m = rm[:, None] & (c < H)[None, :]
    h = tl.load(_tile(hp_p, hp_t, hp_r, T, r, 0, c), mask=m, other=0.0)
    tl.store(_tile(x_p, x_t, x_r, T, r, 0, c), h, mask=m)
    if ABOVE:
        m = rm[:, None] & (c < Ha)[None, :]
        z = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
        h = tl.load(_tile(ha_p, ha_t, ha_r, T, r, 0, c), mask=m, other=0.0)
        tl.store(_tile(x_p, x_t, x_r, T, r, H, c), h * z[:, None], mask=m)
    if BELOW:
        m = rm[:, None] & (c < Hb)[None, :]
        z = tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        h = tl.load(_tile(hb_p, hb_t, hb_r, T, r, 0, c), mask=m, other=0.0)
        tl.store(_tile(x_p, x_t, x_r, T, r, H + Ha, c), h * z[:, None], mask=m)


@triton.jit
def _normed(p_p, p_t, p_r, st_p, st_t, st_r, w_p, b_p, T, r, rm, c, m, R, eps):
    """``LN(proj)`` of a term's rows, its ``[mean | rstd]`` stored."""
    x = tl.load(_tile(p_p, p_t, p_r, T, r, 0, c), mask=m, other=0.0)
    mean, rstd = _stats(x, m, R, eps)
    tl.store(_col(st_p, st_t, st_r, T, r, 0), mean, mask=rm)
    tl.store(_col(st_p, st_t, st_r, T, r, 1), rstd, mask=rm)
    w = tl.load(w_p + c, mask=c < R, other=0.0)
    b = tl.load(b_p + c, mask=c < R, other=0.0)
    return (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit(do_not_specialize=["t"])
def hm_terms_forward(
    t,
    act, act_t, act_r, base_p, base_t, base_r, zp_p, zp_t, zp_r, zb_p, zb_t, zb_r,
    rp_p, rp_t, rp_r, rs_p, rs_t, rs_r, rw_p, rb_p,
    tp_p, tp_t, tp_r, ts_p, ts_t, ts_r, tw_p, tb_p,
    bp_p, bp_t, bp_r, bs_p, bs_t, bs_r, bw_p, bb_p,
    N, R, eps,
    TD: tl.constexpr, BU: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BR)
    m = rm[:, None] & (c < R)[None, :]
    s = tl.load(_tile(base_p, base_t, base_r, T, r, 0, c), mask=m, other=0.0)
    s += _normed(rp_p, rp_t, rp_r, rs_p, rs_t, rs_r, rw_p, rb_p, T, r, rm, c, m, R, eps)
    if BU:
        z = tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        s += z[:, None] * _normed(bp_p, bp_t, bp_r, bs_p, bs_t, bs_r, bw_p, bb_p, T, r, rm,
                                  c, m, R, eps)
    if TD:
        z = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
        s += z[:, None] * _normed(tp_p, tp_t, tp_r, ts_p, ts_t, ts_r, tw_p, tb_p, T, r, rm,
                                  c, m, R, eps)
    tl.store(_tile(act, act_t, act_r, T, r, 0, c), s, mask=m)


@triton.jit(do_not_specialize=["t"])
def hm_backward(
    t,
    act, act_t, act_r, tc_p, tc_t, tc_r, c_p, c_t, c_r, cp_p, cp_t, cp_r, u_p, u_t, u_r,
    d_p, d_t, d_r, zd_p, zd_t, zd_r, zp_p, zp_t, zp_r, zb_p, zb_t, zb_r,
    st_p, st_t, st_r, lnw_p,
    gha_p, gha_t, gha_r, gho_p, gho_t, gho_r, gca_p, gca_t, gca_r,
    gza_p, gza_t, gza_r, gzo_p, gzo_t, gzo_r, gzb_p, gzb_t, gzb_r,
    gs_p, gs_t, gs_r, gt_p, gt_t, gt_r,
    N, H, half_slope_p,
    HAS_Z: tl.constexpr, BELOW: tl.constexpr, LN: tl.constexpr, GH_OUT: tl.constexpr,
    GZ_OUT: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BH)
    cm = c < H
    m = rm[:, None] & cm[None, :]
    zp = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
    not_prev = 1.0 - zp
    if BELOW:
        zb = tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        update = not_prev * zb
        copy = not_prev - update
        not_copy = update + zp
    else:
        update = not_prev
        copy = zp * 0.0
        not_copy = copy + 1.0
    f = tl.load(_tile(act, act_t, act_r, T, r, 0, c), mask=m, other=0.0)
    i = tl.load(_tile(act, act_t, act_r, T, r, H, c), mask=m, other=0.0)
    o = tl.load(_tile(act, act_t, act_r, T, r, 2 * H, c), mask=m, other=0.0)
    g = tl.load(_tile(act, act_t, act_r, T, r, 3 * H, c), mask=m, other=0.0)
    tc = tl.load(_tile(tc_p, tc_t, tc_r, T, r, 0, c), mask=m, other=0.0)
    cp = tl.load(_tile(cp_p, cp_t, cp_r, T, r, 0, c), mask=m, other=0.0)
    gz = tl.load(_col(gza_p, gza_t, gza_r, T, r, 0), mask=rm, other=0.0)
    if GZ_OUT:
        gz += tl.load(_col(gzo_p, gzo_t, gzo_r, T, r, 0), mask=rm, other=0.0)
    gh = tl.load(_tile(gha_p, gha_t, gha_r, T, r, 0, c), mask=m, other=0.0)
    if GH_OUT:
        gh += tl.load(_tile(gho_p, gho_t, gho_r, T, r, 0, c), mask=m, other=0.0)
    # Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c)
    ghn = gh * not_copy[:, None]
    g_o = ghn * tc * o * (1.0 - o)
    g_t = ghn * o * (1.0 - tc * tc)
    tl.store(_tile(gt_p, gt_t, gt_r, T, r, 0, c), g_t, mask=m)
    if BELOW:  # dL/dh_prev through COPY; the products add theirs
        tl.store(_tile(gha_p, gha_t, gha_r, T, r, 0, c), gh * copy[:, None], mask=m)
    if LN:
        cc = tl.load(_tile(c_p, c_t, c_r, T, r, 0, c), mask=m, other=0.0)
        mean = tl.load(_col(st_p, st_t, st_r, T, r, 0), mask=rm, other=0.0)
        rstd = tl.load(_col(st_p, st_t, st_r, T, r, 1), mask=rm, other=0.0)
        w = tl.load(lnw_p + c, mask=cm, other=0.0)
        g_c = _ln_backward(g_t, cc, mean, rstd, w, m, H)
    else:
        g_c = g_t
    # Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g
    gcj = tl.where(m, g_c + tl.load(_tile(gca_p, gca_t, gca_r, T, r, 0, c), mask=m,
                                    other=0.0), 0.0)
    gcp = gcj * cp
    gig = gcj * not_copy[:, None]
    tl.store(_tile(gs_p, gs_t, gs_r, T, r, 0, c), gcp * update[:, None] * f * (1.0 - f),
             mask=m)
    tl.store(_tile(gs_p, gs_t, gs_r, T, r, H, c), gig * g * i * (1.0 - i), mask=m)
    tl.store(_tile(gs_p, gs_t, gs_r, T, r, 2 * H, c), g_o, mask=m)
    tl.store(_tile(gs_p, gs_t, gs_r, T, r, 3 * H, c), gig * i * (1.0 - g * g), mask=m)
    tl.store(_tile(gca_p, gca_t, gca_r, T, r, 0, c),
             gcj * (copy[:, None] + update[:, None] * f), mask=m)
    g_update = _rowsum(gcp * f)
    if HAS_Z:  # Eq. 8-10, straight through: dz/dz~ = 1 (docs/model.md decision 5)
        u = tl.load(_col(u_p, u_t, u_r, T, r, 0), mask=rm, other=0.0)
        g_zt = tl.where((u > 0.0) & (u < 1.0), gz * not_copy, 0.0) * tl.load(half_slope_p)
        tl.store(_col(gs_p, gs_t, gs_r, T, r, 4 * H), g_zt, mask=rm)
    if BELOW:
        # dL/d(1 - COPY) - dL/dCOPY = <[gh | gc], diff> + gz (z_bin - z_prev)
        dh = tl.load(_tile(d_p, d_t, d_r, T, r, 0, c), mask=m, other=0.0)
        dc = tl.load(_tile(d_p, d_t, d_r, T, r, H, c), mask=m, other=0.0)
        g_mix = _rowsum(gh * dh + gcj * dc)
        if HAS_Z:
            g_mix += gz * tl.load(_col(zd_p, zd_t, zd_r, T, r, 0), mask=rm, other=0.0)
        # COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below
        g_update += g_mix
        g_prev = g_mix - g_update * zb
        if HAS_Z:
            g_prev += gz * copy
        gzb = tl.load(_col(gzb_p, gzb_t, gzb_r, T, r, 0), mask=rm, other=0.0)
        tl.store(_col(gzb_p, gzb_t, gzb_r, T, r, 0), gzb + g_update * not_prev, mask=rm)
    else:
        g_prev = -g_update  # UPDATE = 1 - z_prev
    tl.store(_col(gza_p, gza_t, gza_r, T, r, 0), g_prev, mask=rm)


@triton.jit(do_not_specialize=["t"])
def hm_spread(
    t,
    gx_p, gx_t, gx_r, gha_p, gha_t, gha_r, ha_p, ha_t, ha_r, zp_p, zp_t, zp_r,
    ghaa_p, ghaa_t, ghaa_r, gza_p, gza_t, gza_r, hb_p, hb_t, hb_r, zb_p, zb_t, zb_r,
    ghab_p, ghab_t, ghab_r, gzab_p, gzab_t, gzab_r,
    N, H, Ha, Hb,
    ABOVE: tl.constexpr, BELOW: tl.constexpr, COPIES: tl.constexpr, BM: tl.constexpr,
    BK: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BK)
    m = rm[:, None] & (c < H)[None, :]
    g = tl.load(_tile(gx_p, gx_t, gx_r, T, r, 0, c), mask=m, other=0.0)
    if COPIES:  # a layer above the bottom one: gh_acc holds dL/dh_prev through COPY
        g += tl.load(_tile(gha_p, gha_t, gha_r, T, r, 0, c), mask=m, other=0.0)
    tl.store(_tile(gha_p, gha_t, gha_r, T, r, 0, c), g, mask=m)
    if ABOVE:
        m = rm[:, None] & (c < Ha)[None, :]
        g = tl.load(_tile(gx_p, gx_t, gx_r, T, r, H, c), mask=m, other=0.0)
        h = tl.load(_tile(ha_p, ha_t, ha_r, T, r, 0, c), mask=m, other=0.0)
        z = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
        acc = tl.load(_tile(ghaa_p, ghaa_t, ghaa_r, T, r, 0, c), mask=m, other=0.0)
        tl.store(_tile(ghaa_p, ghaa_t, ghaa_r, T, r, 0, c), acc + g * z[:, None], mask=m)
        gz = tl.load(_col(gza_p, gza_t, gza_r, T, r, 0), mask=rm, other=0.0)
        tl.store(_col(gza_p, gza_t, gza_r, T, r, 0), gz + _rowsum(g * h), mask=rm)
    if BELOW:
        m = rm[:, None] & (c < Hb)[None, :]
        g = tl.load(_tile(gx_p, gx_t, gx_r, T, r, H + Ha, c), mask=m, other=0.0)
        h = tl.load(_tile(hb_p, hb_t, hb_r, T, r, 0, c), mask=m, other=0.0)
        z = tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        acc = tl.load(_tile(ghab_p, ghab_t, ghab_r, T, r, 0, c), mask=m, other=0.0)
        tl.store(_tile(ghab_p, ghab_t, ghab_r, T, r, 0, c), acc + g * z[:, None], mask=m)
        gz = tl.load(_col(gzab_p, gzab_t, gzab_r, T, r, 0), mask=rm, other=0.0)
        tl.store(_col(gzab_p, gzab_t, gzab_r, T, r, 0), gz + _rowsum(g * h), mask=rm)


@triton.jit
def _term_backward(gs, gate, p_p, p_t, p_r, st_p, st_t, st_r, gp_p, gp_t, gp_r, w_p, b_p,
                   T, r, rm, c, m, R):
    """A term's ``g_proj = LN_bwd(gate gs)``; returns ``<gs, LN(proj)>`` per row."""
    x = tl.load(_tile(p_p, p_t, p_r, T, r, 0, c), mask=m, other=0.0)
    mean = tl.load(_col(st_p, st_t, st_r, T, r, 0), mask=rm, other=0.0)
    rstd = tl.load(_col(st_p, st_t, st_r, T, r, 1), mask=rm, other=0.0)
    w = tl.load(w_p + c, mask=c < R, other=0.0)
    b = tl.load(b_p + c, mask=c < R, other=0.0)
    normed = (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
    dot = _rowsum(tl.where(m, gs * normed, 0.0))
    g = _ln_backward(gs * gate[:, None], x, mean, rstd, w, m, R)
    tl.store(_tile(gp_p, gp_t, gp_r, T, r, 0, c), g, mask=m)
    return dot


@triton.jit(do_not_specialize=["t"])
def hm_terms_backward(
    t,
    gs_p, gs_t, gs_r, zp_p, zp_t, zp_r, zb_p, zb_t, zb_r, gza_p, gza_t, gza_r,
    gzb_p, gzb_t, gzb_r,
    rp_p, rp_t, rp_r, rs_p, rs_t, rs_r, rg_p, rg_t, rg_r, rw_p, rb_p,
    tp_p, tp_t, tp_r, ts_p, ts_t, ts_r, tg_p, tg_t, tg_r, tw_p, tb_p,
    bp_p, bp_t, bp_r, bs_p, bs_t, bs_r, bg_p, bg_t, bg_r, bw_p, bb_p,
    N, R,
    TD: tl.constexpr, BU: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr,
):
    r, rm, T = _rows(t, N, BM)
    c = tl.arange(0, BR)
    m = rm[:, None] & (c < R)[None, :]
    gs = tl.load(_tile(gs_p, gs_t, gs_r, T, r, 0, c), mask=m, other=0.0)
    one = tl.where(rm, 1.0, 1.0)
    _term_backward(gs, one, rp_p, rp_t, rp_r, rs_p, rs_t, rs_r, rg_p, rg_t, rg_r, rw_p, rb_p,
                   T, r, rm, c, m, R)
    if TD:
        z = tl.load(_col(zp_p, zp_t, zp_r, T, r, 0), mask=rm, other=0.0)
        dot = _term_backward(gs, z, tp_p, tp_t, tp_r, ts_p, ts_t, ts_r, tg_p, tg_t, tg_r,
                             tw_p, tb_p, T, r, rm, c, m, R)
        acc = tl.load(_col(gza_p, gza_t, gza_r, T, r, 0), mask=rm, other=0.0)
        tl.store(_col(gza_p, gza_t, gza_r, T, r, 0), acc + dot, mask=rm)
    if BU:
        z = tl.load(_col(zb_p, zb_t, zb_r, T, r, 0), mask=rm, other=0.0)
        dot = _term_backward(gs, z, bp_p, bp_t, bp_r, bs_p, bs_t, bs_r, bg_p, bg_t, bg_r,
                             bw_p, bb_p, T, r, rm, c, m, R)
        acc = tl.load(_col(gzb_p, gzb_t, gzb_r, T, r, 0), mask=rm, other=0.0)
        tl.store(_col(gzb_p, gzb_t, gzb_r, T, r, 0), acc + dot, mask=rm)
