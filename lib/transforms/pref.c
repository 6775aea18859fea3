/* Preference losses: dpo (TRL's loss types), cpo / simpo, orpo, kto.
 * Each is only a graph builder over the sequence layout of
 * doc/design.md ("Sequences and groups"): per-token log-probs, their sums
 * over a sequence (segment_sum), and the chosen / rejected sequence of a
 * pair read with mel_g_group_read.  No derivative code.  Formulas and
 * sources in doc/transforms.md.
 *
 * Layout shared by all four: the index input "seq_ids" gives each row's
 * sequence (-1: none); a pair's chosen sequence has an even id 2b and
 * its rejected one 2b + 1 (groups of 2, rank 0 chosen, rank 1 rejected);
 * kto's sequences stand alone.  A token counts when its label is not
 * ignore_index.  y is the pair's (kto: the sequence's) loss on the first
 * row of its group and 0 elsewhere, with that row as the count, so the
 * reduction "mean" is the mean over pairs, as TRL's losses.mean(). */
#include <math.h>
#include <string.h>

#include "mel_internal.h"

/* ---------------------------------------------------- shared pieces */

static mel_val C(mel_graph *g, double v) { return mel_g_const(g, v); }

/* log σ(x) = min(x, 0) − log1p(exp(−|x|)), finite for every x */
static mel_val logsig(mel_graph *g, mel_val x)
{
    return mel_g_sub(g, mel_g_min(g, x, C(g, 0)), mel_g_log1p(g, mel_g_exp(g, mel_g_neg(g, mel_g_abs(g, x)))));
}

static mel_val relu(mel_graph *g, mel_val x) { return mel_g_max(g, x, C(g, 0)); }

/* What every preference program starts from. */
typedef struct seqs {
    mel_val lab, m;  /* labels, token mask (label != ignore_index, and
                      * completion_mask != 0 when the program reads it) */
    mel_val valid;   /* label != ignore_index                           */
    mel_val lp;      /* the token's log-prob, 0 where m = 0             */
    mel_val pi;      /* Σ of lp over the row's sequence                 */
    mel_val len;     /* max(tokens of the sequence, 1)                  */
    mel_val gfirst;  /* 1 on the first row of each group                */
} seqs;

static mel_val masked(mel_graph *g, mel_val m, mel_val v) { return mel_g_where(g, m, v, C(g, 0)); }

/* completion: the sequence sums count only rows whose per-row input
 * "completion_mask" is not 0 (orpo: its NLL also covers the prompt) */
static seqs start(mel_graph *g, const double *p, int64_t group, int completion)
{
    seqs s;
    mel_g_set_sequence_ids(g, "seq_ids");
    mel_g_set_group(g, group);
    s.lab = mel_g_index(g, "labels", (int64_t)p[MEL_P_IGNORE]);
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    s.valid = s.m = mel_g_valid(g, s.lab);
    if (completion)
        s.m = mel_g_mul(g, s.m, mel_g_lt(g, C(g, 0), mel_g_abs(g, mel_g_input(g, "completion_mask", 0))));
    s.lp = masked(g, s.valid, mel_g_sub(g, mel_g_gather(g, z, s.lab), mel_g_logsumexp(g, z)));
    if (completion) s.pi = mel_g_segment_sum(g, masked(g, s.m, s.lp));
    else s.pi = mel_g_segment_sum(g, s.lp);
    s.len = mel_g_max(g, mel_g_segment_sum(g, s.m), C(g, 1));
    s.gfirst = mel_g_group_first(g);
    return s;
}

/* Σ over the sequence of the reference's token log-probs: the per-row
 * input "ref_logp" (source 0) or head 1's log-prob of the label (1). */
static mel_val ref_sum(mel_graph *g, const seqs *s, const double *p, int source)
{
    mel_val r;
    if (source == 1) {
        mel_val zr = mel_bt_prep_logits(g, 1, 0, p);
        r = mel_g_sub(g, mel_g_gather(g, zr, s->lab), mel_g_logsumexp(g, zr));
    } else {
        r = mel_g_input(g, "ref_logp", 0);
    }
    return mel_g_segment_sum(g, masked(g, s->m, r));
}

/* α·(−lp) on the chosen sequence's tokens with a label over the batch's
 * chosen tokens per pair k: summed over the rows and divided by the pairs
 * (the mean reduction) it is α times TRL's NLL, the mean over the batch's
 * chosen tokens.  k = 0: over the chosen sequence's own tokens (the mean
 * over pairs of each chosen sequence's mean NLL; TRL's when the chosen
 * sequences have equal lengths). */
static mel_val chosen_nll(mel_graph *g, const seqs *s, double alpha, double k)
{
    mel_val chosen = mel_g_eq(g, mel_g_sequence_rank(g), C(g, 0));
    mel_val nll = masked(g, chosen, mel_g_neg(g, s->lp));
    if (k > 0) return mel_g_scale(g, nll, alpha / k);
    mel_val n = mel_g_max(g, mel_g_segment_sum(g, s->valid), C(g, 1));
    return mel_g_scale(g, mel_g_div(g, nll, n), alpha);
}

/* y = where(first row of the group, loss, 0) (+ extra), count = that row */
static mel_status finish_pair(mel_graph *g, const seqs *s, mel_val loss, mel_val extra)
{
    mel_val y = masked(g, s->gfirst, loss);
    if (extra >= 0) y = mel_g_add(g, y, extra);
    mel_g_set_count(g, s->gfirst);
    return mel_g_set_output(g, y);
}

static void aux_pair(mel_graph *g, const seqs *s, const char *name, mel_val v)
{
    mel_g_add_aux(g, name, masked(g, s->gfirst, v));
}

/* ----------------------------------------------------------- dpo */

/* loss_type codes, in TRL's order; mel_builtin_param_word maps the words */
enum { DPO_SIGMOID, DPO_HINGE, DPO_IPO, DPO_EXO_PAIR, DPO_NCA_PAIR, DPO_ROBUST, DPO_BCO_PAIR,
       DPO_SPPO_HARD, DPO_AOT, DPO_AOT_PAIR, DPO_APO_ZERO, DPO_APO_DOWN, DPO_DISCOPOP, DPO_SFT,
       DPO_SIGMOID_NORM, DPO__N };
static const char *const dpo_names[DPO__N] = {
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_pair", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"};

enum { D_BETA = MEL_P_COMMON, D_TYPE, D_LS, D_REF, D_FREE, D_RPO, D_TOKENS, D_TAU, D_BCO };

static mel_status build_dpo(mel_graph *g, const double *p)
{
    const int type = (int)p[D_TYPE];
    const double beta = p[D_BETA], eps = p[D_LS];
    seqs s = start(g, p, 2, 0);
    mel_val lr = s.pi; /* log ratio π − ref of the row's sequence */
    if (!p[D_FREE]) lr = mel_g_sub(g, s.pi, ref_sum(g, &s, p, (int)p[D_REF]));
    mel_val clr = mel_g_group_read(g, lr, 0), rlr = mel_g_group_read(g, lr, 1);
    mel_val delta = mel_g_sub(g, clr, rlr);
    mel_val bd = mel_g_scale(g, delta, beta);
    mel_val cr = mel_g_scale(g, clr, beta), rr = mel_g_scale(g, rlr, beta);
    mel_val loss = -1;
    switch (type) {
    case DPO_SIGMOID:
        loss = mel_g_neg(g, mel_g_add(g, mel_g_scale(g, logsig(g, bd), 1 - eps),
                                      mel_g_scale(g, logsig(g, mel_g_neg(g, bd)), eps)));
        break;
    case DPO_ROBUST:
        loss = mel_g_scale(g, mel_g_sub(g, mel_g_scale(g, logsig(g, mel_g_neg(g, bd)), eps),
                                        mel_g_scale(g, logsig(g, bd), 1 - eps)),
                           1 / (1 - 2 * eps));
        break;
    case DPO_HINGE: loss = relu(g, mel_g_sub(g, C(g, 1), bd)); break;
    case DPO_IPO:
    case DPO_SIGMOID_NORM: {
        /* TRL divides each sequence's log ratio by its token count */
        mel_val avg = mel_g_div(g, lr, s.len);
        mel_val d = mel_g_sub(g, mel_g_group_read(g, avg, 0), mel_g_group_read(g, avg, 1));
        loss = type == DPO_IPO ? mel_g_square(g, mel_g_sub(g, d, C(g, 1 / (2 * beta))))
                               : mel_g_neg(g, logsig(g, mel_g_scale(g, d, beta)));
        break;
    }
    case DPO_EXO_PAIR: {
        mel_val nbd = mel_g_neg(g, bd);
        loss = mel_g_add(g, mel_g_mul(g, mel_g_sigmoid(g, bd), mel_g_sub(g, logsig(g, bd), C(g, log1p(-eps)))),
                         mel_g_mul(g, mel_g_sigmoid(g, nbd), mel_g_sub(g, logsig(g, nbd), C(g, log(eps)))));
        break;
    }
    case DPO_NCA_PAIR:
        loss = mel_g_neg(g, mel_g_add(g, logsig(g, cr),
                                      mel_g_scale(g, mel_g_add(g, logsig(g, mel_g_neg(g, cr)),
                                                               logsig(g, mel_g_neg(g, rr))), 0.5)));
        break;
    case DPO_BCO_PAIR: {
        mel_val dl = C(g, p[D_BCO]);
        loss = mel_g_neg(g, mel_g_add(g, logsig(g, mel_g_sub(g, cr, dl)),
                                      logsig(g, mel_g_neg(g, mel_g_sub(g, rr, dl)))));
        break;
    }
    case DPO_SPPO_HARD:
        loss = mel_g_add(g, mel_g_square(g, mel_g_sub(g, clr, C(g, 0.5 / beta))),
                         mel_g_square(g, mel_g_add(g, rlr, C(g, 0.5 / beta))));
        break;
    case DPO_APO_ZERO:
        loss = mel_g_add(g, mel_g_sub(g, C(g, 1), mel_g_sigmoid(g, cr)), mel_g_sigmoid(g, rr));
        break;
    case DPO_APO_DOWN:
        loss = mel_g_add(g, mel_g_sigmoid(g, cr), mel_g_sub(g, C(g, 1), mel_g_sigmoid(g, bd)));
        break;
    case DPO_DISCOPOP: {
        mel_val mod = mel_g_sigmoid(g, mel_g_scale(g, bd, 1 / p[D_TAU]));
        loss = mel_g_add(g, mel_g_mul(g, mel_g_neg(g, logsig(g, bd)), mel_g_sub(g, C(g, 1), mod)),
                         mel_g_mul(g, mel_g_exp(g, mel_g_neg(g, bd)), mod));
        break;
    }
    case DPO_SFT: loss = C(g, 0); break;
    default: mel_g_set_output(g, -1); return MEL_ERR_INVALID_ARGUMENT; /* check_dpo refused it */
    }
    const double alpha = type == DPO_SFT ? 1 : p[D_RPO];
    mel_val nll = alpha > 0 ? chosen_nll(g, &s, alpha, p[D_TOKENS]) : -1;
    aux_pair(g, &s, "chosen_rewards", cr);
    aux_pair(g, &s, "rejected_rewards", rr);
    aux_pair(g, &s, "margins", mel_g_sub(g, cr, rr));
    aux_pair(g, &s, "accuracies", mel_g_lt(g, rr, cr));
    aux_pair(g, &s, "logps_chosen", mel_g_group_read(g, s.pi, 0));
    aux_pair(g, &s, "logps_rejected", mel_g_group_read(g, s.pi, 1));
    return finish_pair(g, &s, loss, nll);
}

/* The NLL's normaliser is given only when there is an NLL. */
static mel_status check_nll(mel_ctx *ctx, const char *tn, const char *an, double alpha, int tokens_given,
                            double tokens)
{
    if (alpha == 0 && tokens_given && tokens != 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': chosen_tokens_per_pair = %g has no effect with %s = 0", tn, tokens, an);
    return MEL_OK;
}

static mel_status check_ref(mel_ctx *ctx, const char *tn, const double *p, const char *given, int ref, int freek)
{
    if (freek >= 0 && p[freek] && given[ref] && p[ref] != 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': reference_free = 1 and ref_source = %g contradict (a reference-free "
                        "loss reads no reference)", tn, p[ref]);
    return MEL_OK;
}

static mel_status check_dpo(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    (void)b;
    const int type = (int)p[D_TYPE];
    const char *tn = dpo_names[type];
    if (type == DPO_AOT || type == DPO_AOT_PAIR)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': loss_type = %s sorts the log ratios over the whole batch of pairs, "
                        "which is not a row program; it is not implemented", tn);
    const int uses_ls = type == DPO_SIGMOID || type == DPO_ROBUST || type == DPO_EXO_PAIR;
    if (given[D_LS] && p[D_LS] != 0 && !uses_ls)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': label_smoothing = %g has no effect with loss_type = %s "
                        "(sigmoid, robust and exo_pair use it)", p[D_LS], tn);
    if (type == DPO_ROBUST && !(p[D_LS] < 0.5))
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': loss_type = robust divides by 1 - 2·label_smoothing: "
                        "label_smoothing = %g must be < 0.5", p[D_LS]);
    if (type == DPO_EXO_PAIR && !(p[D_LS] > 0 && p[D_LS] < 1))
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': loss_type = exo_pair takes log(label_smoothing) and "
                        "log(1 - label_smoothing): label_smoothing = %g must be in (0, 1)", p[D_LS]);
    if (given[D_TAU] && p[D_TAU] != 0.05 && type != DPO_DISCOPOP)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': discopop_tau = %g has no effect with loss_type = %s", p[D_TAU], tn);
    if (given[D_BCO] && p[D_BCO] != 0 && type != DPO_BCO_PAIR)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': bco_delta = %g has no effect with loss_type = %s", p[D_BCO], tn);
    if (type == DPO_SFT && given[D_RPO] && p[D_RPO] != 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'dpo': rpo_alpha = %g and loss_type = sft contradict (sft is the NLL alone)",
                        p[D_RPO]);
    mel_status s = check_nll(ctx, "dpo", type == DPO_SFT ? "loss_type = sft, weight" : "rpo_alpha",
                             type == DPO_SFT ? 1 : p[D_RPO], given[D_TOKENS], p[D_TOKENS]);
    if (s) return s;
    return check_ref(ctx, "dpo", p, given, D_REF, D_FREE);
}

#define PREF_INPUTS                                                                         \
    "inputs: head 0 (policy), labels (a token counts unless ignore_index), seq_ids (chosen " \
    "of pair b: 2b, rejected: 2b + 1, -1: no sequence)"

const mel_builtin mel_builtin_dpo = {
    "dpo",
    "DPO and TRL's variants per pair  " PREF_INPUTS ", ref_logp per token (ref_source=0) or head 1 "
    "(ref_source=1), none with reference_free=1  params: beta, loss_type (0 sigmoid, 1 hinge, 2 ipo, "
    "3 exo_pair, 4 nca_pair, 5 robust, 6 bco_pair, 7 sppo_hard, 10 apo_zero, 11 apo_down, 12 discopop, "
    "13 sft, 14 sigmoid_norm), label_smoothing, rpo_alpha, chosen_tokens_per_pair (the NLL's normaliser), discopop_tau, "
    "bco_delta (a parameter a loss type does not read is refused unless at its default)  y: the pair's loss on its first row (count 1 there: mean = mean over pairs)  aux: "
    "chosen_rewards, rejected_rewards, margins, accuracies, logps_chosen, logps_rejected",
    {MEL_COMMON_PARAMS, {"beta", 0.1, 1e-300, 1e300, 0}, {"loss_type", 0, 0, DPO__N - 1, 1},
     {"label_smoothing", 0, 0, 1, 0}, {"ref_source", 0, 0, 1, 1}, {"reference_free", 0, 0, 1, 1},
     {"rpo_alpha", 0, 0, 1e300, 0}, {"chosen_tokens_per_pair", 0, 0, 1e300, 0},
     {"discopop_tau", 0.05, 1e-300, 1e300, 0}, {"bco_delta", 0, -1e300, 1e300, 0}},
    0,
    check_dpo,
    build_dpo,
};

/* ---------------------------------------------------- cpo and simpo */

enum { CPO_SIGMOID, CPO_HINGE, CPO_IPO, CPO_SIMPO, CPO__N };
static const char *const cpo_names[CPO__N] = {"sigmoid", "hinge", "ipo", "simpo"};
enum { P_BETA = MEL_P_COMMON, P_TYPE, P_LS, P_ALPHA, P_TOKENS, P_GAMMA };

/* TRL's CPOTrainer: logits = π(c) − π(r), token means for ipo and simpo;
 * simpo subtracts γ/β; then sigmoid (with label smoothing), hinge or ipo
 * on β·logits; + α·NLL(chosen). */
static mel_status build_cpo(mel_graph *g, const double *p)
{
    const int type = (int)p[P_TYPE];
    const double beta = p[P_BETA], eps = p[P_LS];
    seqs s = start(g, p, 2, 0);
    const int avg = type == CPO_IPO || type == CPO_SIMPO;
    mel_val lp = avg ? mel_g_div(g, s.pi, s.len) : s.pi;
    mel_val c = mel_g_group_read(g, lp, 0), r = mel_g_group_read(g, lp, 1);
    mel_val logits = mel_g_sub(g, c, r);
    if (type == CPO_SIMPO) logits = mel_g_sub(g, logits, C(g, p[P_GAMMA] / beta));
    mel_val bl = mel_g_scale(g, logits, beta), loss;
    if (type == CPO_HINGE) loss = relu(g, mel_g_sub(g, C(g, 1), bl));
    else if (type == CPO_IPO) loss = mel_g_square(g, mel_g_sub(g, logits, C(g, 1 / (2 * beta))));
    else
        loss = mel_g_neg(g, mel_g_add(g, mel_g_scale(g, logsig(g, bl), 1 - eps),
                                      mel_g_scale(g, logsig(g, mel_g_neg(g, bl)), eps)));
    mel_val nll = p[P_ALPHA] > 0 ? chosen_nll(g, &s, p[P_ALPHA], p[P_TOKENS]) : -1;
    mel_val cr = mel_g_scale(g, c, beta), rr = mel_g_scale(g, r, beta);
    aux_pair(g, &s, "chosen_rewards", cr);
    aux_pair(g, &s, "rejected_rewards", rr);
    aux_pair(g, &s, "margins", mel_g_sub(g, cr, rr));
    aux_pair(g, &s, "accuracies", mel_g_lt(g, rr, cr));
    aux_pair(g, &s, "logps_chosen", c);
    aux_pair(g, &s, "logps_rejected", r);
    return finish_pair(g, &s, loss, nll);
}

static mel_status check_cpo_common(mel_ctx *ctx, const char *tn, const double *p, const char *given)
{
    const int type = (int)p[P_TYPE];
    if (given[P_LS] && p[P_LS] != 0 && type != CPO_SIGMOID && type != CPO_SIMPO)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': label_smoothing = %g has no effect with loss_type = %s", tn, p[P_LS],
                        cpo_names[type]);
    if (given[P_GAMMA] && p[P_GAMMA] != 0.5 && type != CPO_SIMPO)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': simpo_gamma = %g has no effect with loss_type = %s", tn, p[P_GAMMA],
                        cpo_names[type]);
    return check_nll(ctx, tn, "cpo_alpha", p[P_ALPHA], given[P_TOKENS], p[P_TOKENS]);
}

static mel_status check_cpo(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    (void)b;
    return check_cpo_common(ctx, "cpo", p, given);
}

static mel_status check_simpo(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    (void)b;
    if (given[P_TYPE] && p[P_TYPE] != CPO_SIMPO)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'simpo': loss_type = %g has no effect (simpo is cpo's loss_type = simpo; "
                        "use 'cpo' for the others)", p[P_TYPE]);
    return check_cpo_common(ctx, "simpo", p, given);
}

const mel_builtin mel_builtin_cpo = {
    "cpo",
    "CPO per pair (TRL's CPOTrainer)  " PREF_INPUTS "  params: beta, loss_type (0 sigmoid, 1 hinge, 2 ipo, "
    "3 simpo), label_smoothing, cpo_alpha (NLL of the chosen), chosen_tokens_per_pair, simpo_gamma  "
    "y, aux: as dpo",
    {MEL_COMMON_PARAMS, {"beta", 0.1, 1e-300, 1e300, 0}, {"loss_type", 0, 0, CPO__N - 1, 1},
     {"label_smoothing", 0, 0, 0.5, 0}, {"cpo_alpha", 1, 0, 1e300, 0},
     {"chosen_tokens_per_pair", 0, 0, 1e300, 0}, {"simpo_gamma", 0.5, -1e300, 1e300, 0}},
    0,
    check_cpo,
    build_cpo,
};

const mel_builtin mel_builtin_simpo = {
    "simpo",
    "SimPO per pair: -log σ(β(mean logp(chosen) - mean logp(rejected)) - γ) (TRL's CPOTrainer with "
    "loss_type=simpo)  " PREF_INPUTS "  params: beta, simpo_gamma, label_smoothing, cpo_alpha (default 0), "
    "chosen_tokens_per_pair  y, aux: as dpo",
    {MEL_COMMON_PARAMS, {"beta", 2, 1e-300, 1e300, 0}, {"loss_type", CPO_SIMPO, CPO_SIMPO, CPO_SIMPO, 1},
     {"label_smoothing", 0, 0, 0.5, 0}, {"cpo_alpha", 0, 0, 1e300, 0},
     {"chosen_tokens_per_pair", 0, 0, 1e300, 0}, {"simpo_gamma", 0.5, -1e300, 1e300, 0}},
    0,
    check_simpo,
    build_cpo,
};

/* ------------------------------------------------------------ orpo */

enum { O_BETA = MEL_P_COMMON, O_TOKENS };

/* TRL's ORPOTrainer: token-mean log-probs π̄ over the completion
 * (completion_mask); log odds(s) = π̄ − log(1 − exp(π̄)); loss =
 * NLL(chosen) − β·mean log σ(log odds(c) − log odds(r)), the NLL over
 * every chosen token with a label, prompt included (as TRL). */
static mel_status build_orpo(mel_graph *g, const double *p)
{
    seqs s = start(g, p, 2, 1);
    mel_val avg = mel_g_div(g, s.pi, s.len);
    mel_val c = mel_g_group_read(g, avg, 0), r = mel_g_group_read(g, avg, 1);
    mel_val lc = mel_g_log1p(g, mel_g_neg(g, mel_g_exp(g, c)));
    mel_val lr = mel_g_log1p(g, mel_g_neg(g, mel_g_exp(g, r)));
    mel_val log_odds = mel_g_sub(g, mel_g_sub(g, c, r), mel_g_sub(g, lc, lr));
    mel_val ratio = logsig(g, log_odds);
    mel_val loss = mel_g_scale(g, ratio, -p[O_BETA]);
    mel_val cr = mel_g_scale(g, c, p[O_BETA]), rr = mel_g_scale(g, r, p[O_BETA]);
    aux_pair(g, &s, "chosen_rewards", cr);
    aux_pair(g, &s, "rejected_rewards", rr);
    aux_pair(g, &s, "margins", mel_g_sub(g, cr, rr));
    aux_pair(g, &s, "accuracies", mel_g_lt(g, rr, cr));
    aux_pair(g, &s, "log_odds_ratio", ratio);
    aux_pair(g, &s, "log_odds_chosen", log_odds);
    return finish_pair(g, &s, loss, chosen_nll(g, &s, 1, p[O_TOKENS]));
}

static mel_status check_orpo(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    (void)b;
    return check_nll(ctx, "orpo", "the NLL weight", 1, given[O_TOKENS], p[O_TOKENS]);
}

const mel_builtin mel_builtin_orpo = {
    "orpo",
    "ORPO per pair: NLL(chosen) - beta·log σ(log odds(chosen) - log odds(rejected)) on token-mean "
    "log-probs (TRL's ORPOTrainer; beta is the paper's λ)  " PREF_INPUTS ", completion_mask (per row: "
    "1 on completion tokens; the NLL also covers the prompt tokens with labels)  params: beta, "
    "chosen_tokens_per_pair (required)  y: as dpo  aux: chosen_rewards, rejected_rewards, margins, "
    "accuracies, log_odds_ratio, log_odds_chosen",
    {MEL_COMMON_PARAMS, {"beta", 0.1, 0, 1e300, 0}, {"chosen_tokens_per_pair", 0, 0, 1e300, 0}},
    0,
    check_orpo,
    build_orpo,
};

/* ------------------------------------------------------------- kto */

enum { K_BETA = MEL_P_COMMON, K_WD, K_WU, K_REF };

/* TRL's KTOTrainer per sequence, log ratio l = π − ref, z0 the batch's KL
 * (the per-row input "kl_ref", detached): desirable w_d·(1 − σ(β(l − z0))),
 * undesirable w_u·(1 − σ(β(z0 − l))); the flag "desirable" (1 / 0) and z0
 * are read on the sequence's first row. */
static mel_status build_kto(mel_graph *g, const double *p)
{
    seqs s = start(g, p, 1, 0);
    mel_val l = mel_g_sub(g, s.pi, ref_sum(g, &s, p, (int)p[K_REF]));
    mel_val z0 = mel_g_input(g, "kl_ref", 0);
    mel_val des = mel_g_lt(g, C(g, 0.5), mel_g_input(g, "desirable", 0));
    mel_val ld = mel_g_scale(g, mel_g_sub(g, C(g, 1), mel_g_sigmoid(g, mel_g_scale(g, mel_g_sub(g, l, z0), p[K_BETA]))),
                             p[K_WD]);
    mel_val lu = mel_g_scale(g, mel_g_sub(g, C(g, 1), mel_g_sigmoid(g, mel_g_scale(g, mel_g_sub(g, z0, l), p[K_BETA]))),
                             p[K_WU]);
    mel_val reward = mel_g_scale(g, l, p[K_BETA]);
    aux_pair(g, &s, "chosen_rewards", masked(g, des, reward));
    aux_pair(g, &s, "rejected_rewards", mel_g_where(g, des, C(g, 0), reward));
    aux_pair(g, &s, "logps", s.pi);
    return finish_pair(g, &s, mel_g_where(g, des, ld, lu), -1);
}

const mel_builtin mel_builtin_kto = {
    "kto",
    "KTO per sequence (TRL's KTOTrainer)  inputs: head 0 (policy), labels, seq_ids (any ids, -1: none), "
    "desirable (1 / 0 per row, read on the sequence's first row), kl_ref (the batch's KL reference point "
    "z0, detached), ref_logp per token (ref_source=0) or head 1 (ref_source=1)  params: beta, "
    "desirable_weight, undesirable_weight  y: the sequence's loss on its first row (count 1 there)  aux: "
    "chosen_rewards, rejected_rewards, logps",
    {MEL_COMMON_PARAMS, {"beta", 0.1, 0, 1e300, 0}, {"desirable_weight", 1, 0, 1e300, 0},
     {"undesirable_weight", 1, 0, 1e300, 0}, {"ref_source", 0, 0, 1, 1}},
    0,
    NULL,
    build_kto,
};

/* ------------------------------------------------ symbolic parameters */

typedef struct pword {
    const char *transform, *param;
    const char *const *words;
    int n;
} pword;

static const char *const grpo_types[] = {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"};
static const char *const grpo_levels[] = {"token", "sequence"};
static const char *const grpo_is_modes[] = {"none", "token_truncate", "token_mask", "sequence_truncate",
                                            "sequence_mask"};
static const pword pwords[] = {
    {"dpo", "loss_type", dpo_names, DPO__N},
    {"cpo", "loss_type", cpo_names, CPO__N},
    {"simpo", "loss_type", cpo_names, CPO__N},
    {"grpo", "loss_type", grpo_types, 6},
    {"grpo", "importance_sampling_level", grpo_levels, 2},
    {"grpo", "vllm_importance_sampling_mode", grpo_is_modes, 5},
};

mel_status mel_builtin_param_word(mel_ctx *ctx, const char *transform, const char *param, const char *word,
                                  double *value)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (!transform || !param || !word || !value)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_builtin_param_word: %s is NULL",
                        !transform ? "transform" : !param ? "param" : !word ? "word" : "value");
    for (size_t k = 0; k < sizeof pwords / sizeof pwords[0]; k++) {
        const pword *w = &pwords[k];
        if (strcmp(w->transform, transform) || strcmp(w->param, param)) continue;
        for (int i = 0; i < w->n; i++)
            if (!strcmp(w->words[i], word)) {
                *value = i;
                return MEL_OK;
            }
        char list[256] = "";
        for (int i = 0; i < w->n; i++) {
            strncat(list, w->words[i], sizeof list - strlen(list) - 1);
            if (i + 1 < w->n) strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "transform '%s': %s = '%s' is not one of %s", transform,
                        param, word, list);
    }
    return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                    "transform '%s': parameter '%s' takes no words (give a number)", transform, param);
}
