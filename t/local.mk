# TAP tests of the core.  Each t/NAME.t is built from t/NAME.c.
check_PROGRAMS += t/ce.t
t_ce_t_SOURCES = t/ce.c
t_ce_t_LDADD = $(TEST_LIBS)
TESTS += t/ce.t
