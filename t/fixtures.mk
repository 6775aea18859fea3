# Outside-reference fixtures (PyTorch, TRL) compared with libmel by t/fixtures.t.
# The fixtures are committed files written by t/fixtures/gen_fixtures.py, so
# `make check` needs no Python; t/fixtures/files.mk (generated) lists them.
include t/fixtures/files.mk

check_PROGRAMS += t/fixtures.t
t_fixtures_t_SOURCES = t/fixtures.c
t_fixtures_t_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools/mel -I$(top_srcdir)/t
t_fixtures_t_LDADD = tools/mel/libnpy.la $(TEST_LIBS)
TESTS += t/fixtures.t
EXTRA_DIST += $(FIXTURE_FILES) t/fixtures.mk
