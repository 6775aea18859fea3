# The Python package (doc/python.md): installed into $(pythondir)/libmel by
# make install; used from the build tree with PYTHONPATH=$(top_srcdir)/python.
# It loads lib/libmel.so through ctypes; the library directory of the install is
# written into the installed package (_config.py) at install time, so that
# `make install prefix=DIR` records DIR.
PY_SOURCES = \
	python/libmel/__init__.py \
	python/libmel/_lib.py \
	python/libmel/_core.py \
	python/libmel/_dsl.py \
	python/libmel/_function.py \
	python/libmel/hf.py \
	python/libmel/trl.py
if HAVE_PYTHON
melpydir = $(pythondir)/libmel
melpy_PYTHON = $(PY_SOURCES)
install-data-hook: install-python-config
uninstall-hook: uninstall-python-config
.PHONY: install-python-config uninstall-python-config
install-python-config:
	$(MKDIR_P) '$(DESTDIR)$(melpydir)'
	printf '# written by make install\nLIBDIR = %s\n' "'$(libdir)'" > '$(DESTDIR)$(melpydir)/_config.py'
uninstall-python-config:
	rm -f '$(DESTDIR)$(melpydir)/_config.py'
else
EXTRA_DIST += $(PY_SOURCES)
endif

# Tests (TAP through t/python/run.sh; they skip without a Python that imports torch,
# and in sanitizer builds).
PY_TESTS = t/python/builtins.t t/python/dsl.t t/python/challenge.t t/python/errors.t \
	t/python/hf.t t/python/trl.t t/python/autograd.t t/python/compile.t t/python/tiles.t
TESTS += $(PY_TESTS)
dist_check_SCRIPTS += $(PY_TESTS) t/python/run.sh
EXTRA_DIST += t/python/tap.py t/python/test_builtins.py t/python/test_dsl.py \
	t/python/test_challenge.py t/python/test_errors.py t/python/test_hf.py \
	t/python/test_trl.py t/python/test_vp.py t/python/test_autograd.py \
	t/python/test_compile.py
include t/fixtures/hf/files.mk
EXTRA_DIST += $(HF_FIXTURES) t/fixtures/hf/files.mk
