/* list.c -- `mel list`: the built-in transforms. */
#include "mel_tool.h"

int cmd_list(int argc, char **argv)
{
    if (argc > 0) die(EXIT_USAGE, "list: unexpected argument '%s'", argv[0]);
    int n = mel_builtin_count();
    for (int i = 0; i < n; i++) {
        const char *nm = mel_builtin_name(i), *h = mel_builtin_help(i);
        printf("%-12s %s\n", nm ? nm : "?", h ? h : "");
    }
    return 0;
}

