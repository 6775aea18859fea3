/* A row program over a chunk, phase by phase.  The backend runs each phase
 * with no barrier inside (ops->run_phase); the barriers that open a phase
 * are crossed here, in a fixed order: the vocabulary reductions of a
 * vsplit plan combined across processes (lib/vocab.c), then the segment
 * sums (ops->merge_segments). */
#include "backend.h"

mel_status mel_run_program(mel_ctx *ctx, const mel_backend_ops *ops, const mel_transform *t, const mel_plan *p,
                           mel_chunk *ch, double *comm)
{
    mel_status s = MEL_OK;
    if (ch->R <= 0) return MEL_OK;
    for (int q = 0; q < p->n_phases && s == MEL_OK; q++) {
        if (q > 0 && p->vsplit && p->red_start[q + 1] > p->red_start[q])
            s = mel_vp_combine(ctx, t, p, q, ch, comm);
        int seg = 0;
        for (int pos = p->phase_start[q]; pos < p->phase_start[q + 1] && q > 0; pos++)
            seg |= t->nodes[p->order[pos]].op == OP_SEGSUM;
        if (s == MEL_OK && seg) {
            if (!mel_has_layout(t))
                return mel_fail(ctx, MEL_ERR_INTERNAL, "transform '%s': segment sum without sequences",
                                t->name);
            s = ops->merge_segments(ctx, t, p, q, ch);
        }
        if (s == MEL_OK) s = ops->run_phase(ctx, t, p, q, ch);
    }
    return s;
}
