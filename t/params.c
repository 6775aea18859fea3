/* t/params.c -- mel_params_get and mel_builtin_param (libmel 0.2): reading
 * back parameters, and each built-in's parameter list and defaults against
 * the tables of doc/transforms.md written out here. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mel.h"
#include "tap.h"

static int builtin_index(const char *name)
{
    for (int i = 0; i < mel_builtin_count(); i++)
        if (!strcmp(mel_builtin_name(i), name)) return i;
    return -1;
}

/* "name=default ..." of built-in `name`, from mel_builtin_param */
static void listing(const char *name, char *buf, size_t len)
{
    int i = builtin_index(name);
    buf[0] = '\0';
    double d;
    const char *pn;
    for (int j = 0; (pn = mel_builtin_param(i, j, &d)); j++) {
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "%s%s=%g", j ? " " : "", pn, d);
    }
}

int main(void)
{
    /* ---- mel_params_get */
    mel_params *p = mel_params_new();
    double v = 42;
    ok(mel_params_get(p, "beta", &v) == 0 && v == 42, "unset parameter: 0, *v untouched");
    ok(mel_params_set(p, "beta", 0.25) == MEL_OK, "set beta = 0.25");
    ok(mel_params_get(p, "beta", &v) == 1 && v == 0.25, "get beta: 1, 0.25");
    mel_params_set(p, "beta", -3.5);
    ok(mel_params_get(p, "beta", &v) == 1 && v == -3.5, "a second set replaces: -3.5");
    ok(mel_params_get(p, "beta", NULL) == 1, "v may be NULL");
    ok(mel_params_get(p, "bet", &v) == 0 && mel_params_get(p, "beta2", &v) == 0,
       "names match exactly (no prefix)");
    ok(mel_params_get(NULL, "beta", &v) == 0 && mel_params_get(p, NULL, &v) == 0,
       "NULL params or name: 0");
    mel_params_free(p);

    /* ---- mel_builtin_param against doc/transforms.md's parameter tables */
    static const char common[] =
        "ignore_index=-100 logit_scale=1 softcap=0 temperature=1 vocab_valid=0";
    static const struct {
        const char *name, *extra;
    } want[] = {
        {"ce", " label_smoothing=0 z_loss=0"},
        {"logprob", ""},
        {"entropy", ""},
        {"z_loss", ""},
        {"kl", " t2_scale=0 use_labels=1"},
        {"reverse_kl", " t2_scale=0 use_labels=1"},
        {"jsd", " t2_scale=0 beta=0.5 use_labels=1"},
        {"grpo", " beta=0 epsilon_low=0.2 epsilon_high=-1 delta=0 use_old_logp=0 ref_source=0 "
                 "importance_sampling_level=0 seq_len=0 loss_type=3 max_completion_length=512 "
                 "num_items_in_batch=0 sapo_temperature_pos=1 sapo_temperature_neg=1.05 "
                 "vllm_importance_sampling_mode=0 vllm_importance_sampling_min=0 vllm_importance_sampling_cap=3"},
        {"dpo", " beta=0.1 loss_type=0 label_smoothing=0 ref_source=0 reference_free=0 rpo_alpha=0 "
                "chosen_tokens_per_pair=0 discopop_tau=0.05 bco_delta=0"},
        {"cpo", " beta=0.1 loss_type=0 label_smoothing=0 cpo_alpha=1 chosen_tokens_per_pair=0 simpo_gamma=0.5"},
        {"simpo", " beta=2 loss_type=3 label_smoothing=0 cpo_alpha=0 chosen_tokens_per_pair=0 simpo_gamma=0.5"},
        {"orpo", " beta=0.1 chosen_tokens_per_pair=0"},
        {"kto", " beta=0.1 desirable_weight=1 undesirable_weight=1 ref_source=0"},
    };
    int nb = (int)(sizeof want / sizeof want[0]);
    is_int(mel_builtin_count(), nb, "%d built-ins", nb);
    for (int k = 0; k < nb; k++) {
        char got[1024], exp[1024];
        snprintf(exp, sizeof exp, "%s%s", common, want[k].extra);
        listing(want[k].name, got, sizeof got);
        if (!ok(!strcmp(got, exp), "%s: parameters and defaults", want[k].name))
            diag("got  %s\nwant %s", got, exp);
    }
    /* every listed name is accepted by mel_transform_builtin with its
     * default, an unlisted one is refused */
    mel_ctx *ctx;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) return 1;
    for (int i = 0; i < mel_builtin_count(); i++) {
        int good = 1;
        double d;
        const char *pn;
        for (int j = 0; (pn = mel_builtin_param(i, j, &d)); j++) {
            if (!strcmp(pn, "ignore_index") &&
                (!strcmp(mel_builtin_name(i), "entropy") || !strcmp(mel_builtin_name(i), "z_loss")))
                continue; /* listed but refused: those read no labels */
            mel_params *q = mel_params_new();
            mel_params_set(q, pn, d);
            mel_transform *t = NULL;
            mel_status s = mel_transform_builtin(ctx, mel_builtin_name(i), q, &t);
            if (s != MEL_OK) {
                good = 0;
                diag("%s %s=%g: %s", mel_builtin_name(i), pn, d, mel_last_error(ctx));
            }
            mel_transform_free(t);
            mel_params_free(q);
        }
        ok(good, "%s: every listed parameter is accepted at its default", mel_builtin_name(i));
    }
    mel_ctx_destroy(ctx);
    ok(mel_builtin_param(-1, 0, NULL) == NULL && mel_builtin_param(nb, 0, NULL) == NULL &&
           mel_builtin_param(0, -1, NULL) == NULL && mel_builtin_param(0, 1000, NULL) == NULL,
       "out of range: NULL");
    double d = 7;
    ok(mel_builtin_param(builtin_index("logprob"), 5, &d) == NULL && d == 7,
       "past the last parameter: NULL, *dflt untouched");
    return done_testing();
}
