#!/bin/sh
exec "${MEL_TOP_SRCDIR:-.}/t/python/run.sh" autograd
