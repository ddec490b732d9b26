/* One HM-LSTM layer's step: its element-wise work in one pass (the C step backend).
 *
 * library.py (hmrnn/model/loop/backends/cpu) compiles this file on first use (float32,
 * CPU) and calls it through ctypes; every function takes one struct of pointers, laid
 * out as library.py packs it, and a step t. The matrix products stay in torch, in the
 * loop drivers (hmrnn/model/loop/forward.py, backward.py). Each function has an ATen twin
 * of the same name and fields (hmrnn/model/loop/backends/aten.py) that reads and writes
 * exactly the same buffers: hm_gather the fused product's input, hm_terms_forward the
 * layer-normalised terms, hm_forward the rest of the forward step, hm_backward the first
 * half of a backward step, hm_spread and hm_terms_backward its second half.
 *
 * A matrix argument is an M2: the first row's address and the distance between rows,
 * in floats; a row's elements are adjacent. An (M, 1) column is an M2 too, and so is a
 * vector (distance 0: every row the same). A NULL pointer marks an absent argument. The
 * M2 fields of a struct come one after the other, and the struct ends with one step
 * stride per M2 field: at step t each pointer moves on by t times its stride, so that a
 * struct packed once serves every step of a sequence.
 *
 * Each struct's size is exported as <name>_size and its fields, in declaration order, as
 * <name>_fields (name, byte offset, byte size; <name>_nfields of them), <name> being the
 * function's (hm_forward, ...) or, for the structs inside them, hm_m2, hm_term and
 * hm_term_grad. library.py mirrors every struct as a ctypes.Structure with the same field
 * names and checks it against these, field by field, when it loads the library; it also
 * checks every tensor it packs against the sizes the struct declares (N rows of H, ...)
 * before any call. A struct's fields change here, in its FIELDS table and in library.py
 * together.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One field of a struct, as library.py reads it: its name, byte offset and byte size. */
typedef struct {
    const char *name;
    int64_t offset, size;
} Field;

#define FIELD(type, f) {#f, (int64_t)offsetof(type, f), (int64_t)sizeof(((type *)0)->f)}
/* <name>_fields[] and <name>_nfields: the fields of a struct, in declaration order. */
#define FIELDS(name, ...)                                                            \
    const Field name##_fields[] = {__VA_ARGS__};                                     \
    const int64_t name##_nfields = (int64_t)(sizeof(name##_fields) / sizeof(Field))

typedef struct {
    float *p;
    int64_t s;
} M2;
const int64_t hm_m2_size = sizeof(M2);
FIELDS(hm_m2, FIELD(M2, p), FIELD(M2, s));

/* A copy of *arg whose `count` M2 fields from `first` on have moved to step t. */
#define AT_STEP(type, arg, first, count, t)                                   \
    type a_ = *(arg);                                                          \
    for (int k_ = 0; k_ < (count); k_++) (&a_.first)[k_].p += (t) * a_.ts[k_]; \
    const type *a = &a_

/* AT_STEP walks `count` adjacent M2s from `first` to `last`: a struct must lay them out so. */
#define M2_RUN(type, first, last, count)                                                \
    _Static_assert(offsetof(type, last) - offsetof(type, first) ==                    \
                       ((count) - 1) * sizeof(M2),                                    \
                   #type ": AT_STEP's M2 fields are not " #count " adjacent ones")

#define ROW(m, n) ((m).p + (n) * (m).s)
#define AT(m, n) ((m).p[(n) * (m).s])

/* exp, sigmoid and tanh of float32 after Cephes' expf and tanhf (documented there to about
 * 2 ulp), written so
 * that the compiler vectorises the loops that call them. */
static inline float hm_exp(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float hm_sigmoid(float x) { return 1.0f / (1.0f + hm_exp(-x)); }

static inline float hm_tanh(float x) {
    const float ax = fabsf(x), z = x * x;
    const float small =
        ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
          1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    const float big = copysignf(1.0f - 2.0f / (hm_exp(2.0f * ax) + 1.0f), x);
    return ax < 0.625f ? small : big;
}

/* Mean and 1/sqrt(var + eps) of x[0:D] (biased variance, as torch's layer norm). */
static inline void hm_stats(const float *x, int64_t D, double eps, float *mean, float *rstd) {
    double sum = 0.0;
    for (int64_t j = 0; j < D; j++) sum += x[j];
    const double mu = sum / (double)D;
    double sq = 0.0;
    for (int64_t j = 0; j < D; j++) sq += ((double)x[j] - mu) * ((double)x[j] - mu);
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(sq / (double)D + eps));
}

/* dL/dx of y = LN(x) w + b from dL/dy, into dx (which may be gy itself). */
static inline void hm_ln_backward(const float *gy, const float *x, float mean, float rstd,
                                  const float *w, int64_t D, float *dx) {
    double a = 0.0, b = 0.0;
    for (int64_t j = 0; j < D; j++) {
        const float g = gy[j] * w[j];
        a += g;
        b += g * (x[j] - mean) * rstd;
    }
    const float ma = (float)(a / (double)D), mb = (float)(b / (double)D);
    for (int64_t j = 0; j < D; j++)
        dx[j] = rstd * (gy[j] * w[j] - ma - (x[j] - mean) * rstd * mb);
}

/* The per-row mixing coefficients of Eq. 2-3 (aten.py: _mix). */
typedef struct {
    float not_prev, update, copy, not_copy;
} Mix;

static inline Mix hm_mix(float z_prev, const M2 *z_below, int64_t n) {
    Mix m;
    m.not_prev = 1.0f - z_prev;
    if (z_below->p == NULL) { /* the bottom layer: UPDATE or FLUSH, never COPY */
        m.update = m.not_prev;
        m.copy = 0.0f;
        m.not_copy = 1.0f;
    } else {
        m.update = m.not_prev * AT(*z_below, n);
        m.copy = m.not_prev - m.update;
        m.not_copy = m.update + z_prev;
    }
    return m;
}

/* ---- forward: gates, Eq. 2-3, Eq. 8-10 ---- */
#define FORWARD_M2 16
typedef struct {
    int64_t N, H, has_z, soft;
    M2 act, h_prev, c_prev, z_prev, z_below, h_out, c_out, z_out, tanh_c, u, zbin, diff,
        zdiff, cell_stats, ln_w, ln_b;
    double slope, eps;
    int64_t ts[FORWARD_M2];
} Forward;
M2_RUN(Forward, act, ln_b, FORWARD_M2);
const int64_t hm_forward_size = sizeof(Forward); /* checked by library.py */
FIELDS(hm_forward, FIELD(Forward, N), FIELD(Forward, H), FIELD(Forward, has_z),
       FIELD(Forward, soft), FIELD(Forward, act), FIELD(Forward, h_prev),
       FIELD(Forward, c_prev), FIELD(Forward, z_prev), FIELD(Forward, z_below),
       FIELD(Forward, h_out), FIELD(Forward, c_out), FIELD(Forward, z_out),
       FIELD(Forward, tanh_c), FIELD(Forward, u), FIELD(Forward, zbin),
       FIELD(Forward, diff), FIELD(Forward, zdiff), FIELD(Forward, cell_stats),
       FIELD(Forward, ln_w), FIELD(Forward, ln_b), FIELD(Forward, slope),
       FIELD(Forward, eps), FIELD(Forward, ts));

void hm_forward(const Forward *arg, int64_t t) {
    AT_STEP(Forward, arg, act, FORWARD_M2, t);
    const int64_t H = a->H;
    const float half = 0.5f * (float)a->slope;
    const int below = a->z_below.p != NULL;
    for (int64_t n = 0; n < a->N; n++) {
        float *g = ROW(a->act, n), *c = ROW(a->c_out, n), *h = ROW(a->h_out, n);
        float *tc = ROW(a->tanh_c, n);
        const float *hp = ROW(a->h_prev, n), *cp = ROW(a->c_prev, n);
        const float zp = AT(a->z_prev, n);
        const Mix m = hm_mix(zp, &a->z_below, n);
        for (int64_t j = 0; j < 3 * H; j++) g[j] = hm_sigmoid(g[j]);
        for (int64_t j = 3 * H; j < 4 * H; j++) g[j] = hm_tanh(g[j]);
        const float *f = g, *i = g + H, *o = g + 2 * H, *gg = g + 3 * H;
        for (int64_t j = 0; j < H; j++)
            c[j] = cp[j] * (m.copy + m.update * f[j]) + i[j] * gg[j] * m.not_copy;
        if (a->ln_w.p != NULL) {
            const float *lw = a->ln_w.p, *lb = a->ln_b.p;
            float mean, rstd;
            hm_stats(c, H, a->eps, &mean, &rstd);
            for (int64_t j = 0; j < H; j++)
                tc[j] = hm_tanh((c[j] - mean) * rstd * lw[j] + lb[j]);
            ROW(a->cell_stats, n)[0] = mean;
            ROW(a->cell_stats, n)[1] = rstd;
        } else {
            for (int64_t j = 0; j < H; j++) tc[j] = hm_tanh(c[j]);
        }
        if (below) {
            for (int64_t j = 0; j < H; j++)
                h[j] = hp[j] * m.copy + o[j] * tc[j] * m.not_copy;
        } else {
            for (int64_t j = 0; j < H; j++) h[j] = o[j] * tc[j];
        }
        if (a->diff.p != NULL) { /* what COPY's coefficient multiplies, for the backward pass */
            float *restrict d = ROW(a->diff, n);
            for (int64_t j = 0; j < H; j++) d[j] = o[j] * tc[j] - hp[j];
            for (int64_t j = 0; j < H; j++) d[H + j] = i[j] * gg[j] - cp[j];
        }
        if (a->has_z) {
            const float u = g[4 * H] * half + 0.5f;
            float zb;
            if (a->soft) {
                zb = u < 0.0f ? 0.0f : (u > 1.0f ? 1.0f : u); /* Eq. 10 */
                g[4 * H] = zb;
            } else {
                zb = u > 0.5f ? 1.0f : 0.0f;
            }
            AT(a->u, n) = u;
            AT(a->zbin, n) = zb;
            AT(a->z_out, n) = below ? zp * m.copy + zb * m.not_copy : zb; /* Eq. 8-9 */
            if (a->zdiff.p != NULL) AT(a->zdiff, n) = zb - zp;
        }
    }
}

/* ---- the layer-normalised terms of s ----
 * act = base + LN_rec(proj_U) + z_below LN_bu(proj_W) + z_prev LN_td(proj_td) */
typedef struct {
    M2 proj, stats, w, b;
} Term;
const int64_t hm_term_size = sizeof(Term);
FIELDS(hm_term, FIELD(Term, proj), FIELD(Term, stats), FIELD(Term, w), FIELD(Term, b));

#define TERMS_FORWARD_M2 16
typedef struct {
    int64_t N, R;
    M2 act, base, z_prev, z_below;
    Term rec, td, bu;
    double eps;
    int64_t ts[TERMS_FORWARD_M2];
} TermsForward;
M2_RUN(TermsForward, act, bu.b, TERMS_FORWARD_M2);
const int64_t hm_terms_forward_size = sizeof(TermsForward); /* checked by library.py */
FIELDS(hm_terms_forward, FIELD(TermsForward, N), FIELD(TermsForward, R),
       FIELD(TermsForward, act), FIELD(TermsForward, base), FIELD(TermsForward, z_prev),
       FIELD(TermsForward, z_below), FIELD(TermsForward, rec), FIELD(TermsForward, td),
       FIELD(TermsForward, bu), FIELD(TermsForward, eps), FIELD(TermsForward, ts));

static inline void hm_add_normed(const Term *t, int64_t n, int64_t R, double eps, float gate,
                                 float *out) {
    const float *x = ROW(t->proj, n);
    float mean, rstd;
    hm_stats(x, R, eps, &mean, &rstd);
    ROW(t->stats, n)[0] = mean;
    ROW(t->stats, n)[1] = rstd;
    const float *w = t->w.p, *b = t->b.p;
    for (int64_t j = 0; j < R; j++) out[j] += gate * ((x[j] - mean) * rstd * w[j] + b[j]);
}

void hm_terms_forward(const TermsForward *arg, int64_t t) {
    AT_STEP(TermsForward, arg, act, TERMS_FORWARD_M2, t);
    const int64_t R = a->R;
    for (int64_t n = 0; n < a->N; n++) {
        float *s = ROW(a->act, n);
        const float *base = ROW(a->base, n);
        for (int64_t j = 0; j < R; j++) s[j] = base[j];
        hm_add_normed(&a->rec, n, R, a->eps, 1.0f, s);
        if (a->bu.proj.p != NULL) hm_add_normed(&a->bu, n, R, a->eps, AT(a->z_below, n), s);
        if (a->td.proj.p != NULL) hm_add_normed(&a->td, n, R, a->eps, AT(a->z_prev, n), s);
    }
}

/* ---- backward, first half: from dL/dh, dL/dc, dL/dz of the step to dL/ds ----
 * (a backward step up to the products with the weights) */
#define BACKWARD_M2 20
typedef struct {
    int64_t N, H, has_z;
    M2 act, tanh_c, c, c_prev, u, diff, zdiff, z_prev, z_below, cell_stats, ln_w;
    M2 gh_acc, gh_out, gc_acc, gz_acc, gz_out, gz_acc_below, gs, g_tanh;
    M2 scratch; /* H floats */
    double half_slope;
    int64_t ts[BACKWARD_M2];
} Backward;
M2_RUN(Backward, act, scratch, BACKWARD_M2);
const int64_t hm_backward_size = sizeof(Backward); /* checked by library.py */
FIELDS(hm_backward, FIELD(Backward, N), FIELD(Backward, H), FIELD(Backward, has_z),
       FIELD(Backward, act), FIELD(Backward, tanh_c), FIELD(Backward, c),
       FIELD(Backward, c_prev), FIELD(Backward, u), FIELD(Backward, diff),
       FIELD(Backward, zdiff), FIELD(Backward, z_prev), FIELD(Backward, z_below),
       FIELD(Backward, cell_stats), FIELD(Backward, ln_w), FIELD(Backward, gh_acc),
       FIELD(Backward, gh_out), FIELD(Backward, gc_acc), FIELD(Backward, gz_acc),
       FIELD(Backward, gz_out), FIELD(Backward, gz_acc_below), FIELD(Backward, gs),
       FIELD(Backward, g_tanh), FIELD(Backward, scratch), FIELD(Backward, half_slope),
       FIELD(Backward, ts));

void hm_backward(const Backward *arg, int64_t t) {
    AT_STEP(Backward, arg, act, BACKWARD_M2, t);
    const int64_t H = a->H;
    const int below = a->z_below.p != NULL;
    const float half_slope = (float)a->half_slope;
    float *restrict gc = a->scratch.p; /* dL/dc of a row */
    for (int64_t n = 0; n < a->N; n++) {
        const float *restrict g = ROW(a->act, n), *restrict tc = ROW(a->tanh_c, n);
        const float *restrict cp = ROW(a->c_prev, n);
        const float *restrict f = g, *restrict i = g + H, *restrict o = g + 2 * H;
        const float *restrict gg = g + 3 * H;
        float *restrict gha = ROW(a->gh_acc, n), *restrict gca = ROW(a->gc_acc, n);
        float *restrict gs = ROW(a->gs, n), *restrict gt = ROW(a->g_tanh, n);
        const float *restrict gho = a->gh_out.p != NULL ? ROW(a->gh_out, n) : NULL;
        const float *restrict dc = below ? ROW(a->diff, n) + H : NULL;
        const float zp = AT(a->z_prev, n);
        const Mix m = hm_mix(zp, &a->z_below, n);
        const float gz = AT(a->gz_acc, n) + (a->gz_out.p != NULL ? AT(a->gz_out, n) : 0.0f);
        for (int64_t j = 0; j < H; j++) { /* Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c) */
            const float gh = gho != NULL ? gha[j] + gho[j] : gha[j];
            const float ghn = gh * m.not_copy;
            gs[2 * H + j] = ghn * tc[j];
            gt[j] = ghn * o[j] * (1.0f - tc[j] * tc[j]);
            gc[j] = gh; /* kept for the dot product with diff below */
        }
        float g_mix = 0.0f;
        if (below) {
            const float *restrict d = ROW(a->diff, n);
            for (int64_t j = 0; j < H; j++) {
                g_mix += gc[j] * d[j];
                gha[j] = gc[j] * m.copy; /* dL/dh_prev through COPY; the products add theirs */
            }
        }
        if (a->ln_w.p != NULL) {
            const float *st = ROW(a->cell_stats, n);
            hm_ln_backward(gt, ROW(a->c, n), st[0], st[1], a->ln_w.p, H, gc);
        } else {
            for (int64_t j = 0; j < H; j++) gc[j] = gt[j];
        }
        float g_update = 0.0f;
        for (int64_t j = 0; j < H; j++) { /* Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g */
            const float gcj = gc[j] + gca[j];
            const float gcp = gcj * cp[j];
            const float gig = gcj * m.not_copy;
            gs[j] = gcp * m.update * f[j] * (1.0f - f[j]);
            gs[H + j] = gig * gg[j] * i[j] * (1.0f - i[j]);
            gs[3 * H + j] = gig * i[j] * (1.0f - gg[j] * gg[j]);
            gs[2 * H + j] *= o[j] * (1.0f - o[j]);
            gca[j] = gcj * (m.copy + m.update * f[j]);
            gc[j] = gcj; /* the whole dL/dc, for the dot product with diff */
            g_update += gcp * f[j];
        }
        if (below)
            for (int64_t j = 0; j < H; j++) g_mix += gc[j] * dc[j];
        if (a->has_z) { /* Eq. 8-10, straight through: dz/dz~ = 1 (docs/model.md decision 5) */
            const float u = AT(a->u, n);
            gs[4 * H] = (u > 0.0f && u < 1.0f ? gz * m.not_copy : 0.0f) * half_slope;
        }
        float g_prev;
        if (!below) {
            g_prev = -g_update; /* UPDATE = 1 - z_prev */
        } else {
            /* COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below */
            if (a->has_z) g_mix += gz * AT(a->zdiff, n);
            g_update += g_mix;
            g_prev = g_mix - g_update * AT(a->z_below, n);
            if (a->has_z) g_prev += gz * m.copy;
            AT(a->gz_acc_below, n) += g_update * m.not_prev;
        }
        AT(a->gz_acc, n) = g_prev;
    }
}

/* ---- backward, second half without layer norm: spread dL/dx = dL/ds [U | U_td | W] ----
 * onto h_prev, h_above (and z_prev), h_below (and z_below) */
#define SPREAD_M2 10
typedef struct {
    int64_t N, H, Ha, Hb;
    M2 gx, gh_acc, h_above, z_prev, gh_acc_above, gz_acc, h_below, z_below, gh_acc_below,
        gz_acc_below;
    int64_t ts[SPREAD_M2];
} Spread;
M2_RUN(Spread, gx, gz_acc_below, SPREAD_M2);
const int64_t hm_spread_size = sizeof(Spread); /* checked by library.py */
FIELDS(hm_spread, FIELD(Spread, N), FIELD(Spread, H), FIELD(Spread, Ha),
       FIELD(Spread, Hb), FIELD(Spread, gx), FIELD(Spread, gh_acc),
       FIELD(Spread, h_above), FIELD(Spread, z_prev), FIELD(Spread, gh_acc_above),
       FIELD(Spread, gz_acc), FIELD(Spread, h_below), FIELD(Spread, z_below),
       FIELD(Spread, gh_acc_below), FIELD(Spread, gz_acc_below), FIELD(Spread, ts));

static inline void hm_spread_gated(const float *g, const float *h, float gate, int64_t D,
                                   float *gh_acc, float *gz_acc) {
    float dot = 0.0f;
    for (int64_t j = 0; j < D; j++) {
        dot += g[j] * h[j];
        gh_acc[j] += g[j] * gate;
    }
    *gz_acc += dot;
}

void hm_spread(const Spread *arg, int64_t t) {
    AT_STEP(Spread, arg, gx, SPREAD_M2, t);
    const int64_t H = a->H;
    const int copies = a->Hb > 0; /* a layer above the bottom one: gh_acc holds dL/dh via COPY */
    for (int64_t n = 0; n < a->N; n++) {
        const float *gx = ROW(a->gx, n);
        float *gha = ROW(a->gh_acc, n);
        for (int64_t j = 0; j < H; j++) gha[j] = copies ? gha[j] + gx[j] : gx[j];
        if (a->Ha > 0)
            hm_spread_gated(gx + H, ROW(a->h_above, n), AT(a->z_prev, n), a->Ha,
                            ROW(a->gh_acc_above, n), &AT(a->gz_acc, n));
        if (a->Hb > 0)
            hm_spread_gated(gx + H + a->Ha, ROW(a->h_below, n), AT(a->z_below, n), a->Hb,
                            ROW(a->gh_acc_below, n), &AT(a->gz_acc_below, n));
    }
}

/* ---- backward, second half with layer norm: each term's LN backward ----
 * g_proj = LN_bwd(gate dL/ds); a gated term also adds <dL/ds, LN(proj)> to its gate's
 * gradient */
typedef struct {
    M2 proj, stats, g_proj, w, b;
} TermGrad;
const int64_t hm_term_grad_size = sizeof(TermGrad);
FIELDS(hm_term_grad, FIELD(TermGrad, proj), FIELD(TermGrad, stats),
       FIELD(TermGrad, g_proj), FIELD(TermGrad, w), FIELD(TermGrad, b));

#define TERMS_BACKWARD_M2 20
typedef struct {
    int64_t N, R;
    M2 gs, z_prev, z_below, gz_acc, gz_acc_below;
    TermGrad rec, td, bu;
    int64_t ts[TERMS_BACKWARD_M2];
} TermsBackward;
M2_RUN(TermsBackward, gs, bu.b, TERMS_BACKWARD_M2);
const int64_t hm_terms_backward_size = sizeof(TermsBackward); /* checked by library.py */
FIELDS(hm_terms_backward, FIELD(TermsBackward, N), FIELD(TermsBackward, R),
       FIELD(TermsBackward, gs), FIELD(TermsBackward, z_prev),
       FIELD(TermsBackward, z_below), FIELD(TermsBackward, gz_acc),
       FIELD(TermsBackward, gz_acc_below), FIELD(TermsBackward, rec),
       FIELD(TermsBackward, td), FIELD(TermsBackward, bu), FIELD(TermsBackward, ts));

static inline void hm_term_backward(const TermGrad *t, const float *gs, int64_t n, int64_t R,
                                    float gate, float *gz_acc) {
    const float *x = ROW(t->proj, n), *st = ROW(t->stats, n), *w = t->w.p, *b = t->b.p;
    float *out = ROW(t->g_proj, n);
    if (gz_acc != NULL) {
        float dot = 0.0f;
        for (int64_t j = 0; j < R; j++) dot += gs[j] * ((x[j] - st[0]) * st[1] * w[j] + b[j]);
        *gz_acc += dot;
        for (int64_t j = 0; j < R; j++) out[j] = gs[j] * gate;
        hm_ln_backward(out, x, st[0], st[1], w, R, out);
    } else {
        hm_ln_backward(gs, x, st[0], st[1], w, R, out);
    }
}

void hm_terms_backward(const TermsBackward *arg, int64_t t) {
    AT_STEP(TermsBackward, arg, gs, TERMS_BACKWARD_M2, t);
    for (int64_t n = 0; n < a->N; n++) {
        const float *gs = ROW(a->gs, n);
        hm_term_backward(&a->rec, gs, n, a->R, 1.0f, NULL);
        if (a->td.proj.p != NULL)
            hm_term_backward(&a->td, gs, n, a->R, AT(a->z_prev, n), &AT(a->gz_acc, n));
        if (a->bu.proj.p != NULL)
            hm_term_backward(&a->bu, gs, n, a->R, AT(a->z_below, n),
                             &AT(a->gz_acc_below, n));
    }
}

/* ---- the fused product's input (without layer norm) ----
 * x = [h_prev | z_prev h_above | z_below h_below] */
#define GATHER_M2 6
typedef struct {
    int64_t N, H, Ha, Hb;
    M2 x, h_prev, h_above, z_prev, h_below, z_below;
    int64_t ts[GATHER_M2];
} Gather;
M2_RUN(Gather, x, z_below, GATHER_M2);
const int64_t hm_gather_size = sizeof(Gather); /* checked by library.py */
FIELDS(hm_gather, FIELD(Gather, N), FIELD(Gather, H), FIELD(Gather, Ha),
       FIELD(Gather, Hb), FIELD(Gather, x), FIELD(Gather, h_prev), FIELD(Gather, h_above),
       FIELD(Gather, z_prev), FIELD(Gather, h_below), FIELD(Gather, z_below),
       FIELD(Gather, ts));

void hm_gather(const Gather *arg, int64_t t) {
    AT_STEP(Gather, arg, x, GATHER_M2, t);
    const int64_t H = a->H, Ha = a->Ha, Hb = a->Hb;
    for (int64_t n = 0; n < a->N; n++) {
        float *restrict x = ROW(a->x, n);
        const float *restrict h = ROW(a->h_prev, n);
        for (int64_t j = 0; j < H; j++) x[j] = h[j];
        if (Ha > 0) {
            const float *restrict ha = ROW(a->h_above, n);
            const float z = AT(a->z_prev, n);
            for (int64_t j = 0; j < Ha; j++) x[H + j] = ha[j] * z;
        }
        if (Hb > 0) {
            const float *restrict hb = ROW(a->h_below, n);
            const float z = AT(a->z_below, n);
            for (int64_t j = 0; j < Hb; j++) x[H + Ha + j] = hb[j] * z;
        }
    }
}
