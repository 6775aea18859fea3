/* mel.c -- the `mel` command-line tool: dispatch to the commands
 * (contract: README.md's "The mel tool" and doc/api.md; layout in mel_tool.h).
 *
 *   mel run TRANSFORM [options]        compute a transform and its gradients
 *   mel gradcheck TRANSFORM [options]  finite differences on random inputs
 *   mel bench [options]                naive vs recompute vs fused
 *   mel plan TRANSFORM [options]       chunks and workspace of a call, not run
 *   mel list                           built-in transforms
 *   mel --version
 */
#include "mel_tool.h"

#include <signal.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
"usage: mel run TRANSFORM [options]        compute a transform and, on request, its gradients\n"
"       mel gradcheck TRANSFORM [options]  finite differences on random inputs\n"
"       mel bench [options]                time and memory of naive vs recompute vs fused\n"
"       mel plan TRANSFORM [options]       chunks, active rows and workspace of a call, without running it\n"
"       mel list                           built-in transforms\n"
"       mel --version\n"
"'mel COMMAND --help' describes each command's options.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "gradcheck")) return cmd_gradcheck(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "plan")) return cmd_plan(argc - 2, argv + 2);
    if (!strcmp(cmd, "list")) {
        return cmd_list(argc - 2, argv + 2);
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
#ifdef PACKAGE_VERSION
        printf("mel %s (libmel %s)\n", PACKAGE_VERSION, mel_version_string());
#else
        printf("mel %d.%d.%d (libmel %s)\n", MEL_VERSION_MAJOR, MEL_VERSION_MINOR,
               MEL_VERSION_PATCH, mel_version_string());
#endif
        if (mel_version() != MEL_VERSION_NUMBER)
            printf("warning: built with mel.h %d.%d.%d but running libmel %s\n",
                   MEL_VERSION_MAJOR, MEL_VERSION_MINOR, MEL_VERSION_PATCH,
                   mel_version_string());
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    die(EXIT_USAGE, "unknown command '%s' (want run, gradcheck, bench, plan, list or --version)", cmd);
}
