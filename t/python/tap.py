"""A minimal TAP producer for the Python tests (no dependency beyond the stdlib)."""
import sys
import traceback


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, desc))
        else:
            self.failed += 1
            print("not ok %d - %s" % (self.n, desc))
        if diag:
            print("# " + diag)
        sys.stdout.flush()
        return cond

    def close(self, got, ref, tol, desc):
        """max|got - ref| / max(max|ref|, 1e-30) <= tol (denominator 1 for all-zero ref)."""
        import torch
        got = got.detach().to(torch.float64).cpu()
        ref = ref.detach().to(torch.float64).cpu()
        if got.shape != ref.shape:
            return self.ok(False, desc, "shape %s, want %s" % (tuple(got.shape), tuple(ref.shape)))
        if ref.numel() == 0:
            return self.ok(True, desc)
        if not torch.isfinite(got).all():
            return self.ok(False, desc, "non-finite values")
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item() / (scale if scale > 0 else 1.0)
        return self.ok(err <= tol, desc, "err %.3g (tol %.0e)" % (err, tol))

    def raises(self, exc, fn, desc, match=()):
        try:
            fn()
        except exc as e:
            msg = str(e)
            missing = [m for m in match if m not in msg]
            return self.ok(not missing, desc, "message: %s%s" % (
                msg, "; missing %r" % missing if missing else ""))
        except Exception as e:  # wrong type
            return self.ok(False, desc, "raised %s: %s" % (type(e).__name__, e))
        return self.ok(False, desc, "no exception")

    def done(self):
        print("1..%d" % self.n)
        sys.exit(1 if self.failed else 0)


def run(main):
    t = Tap()
    try:
        main(t)
    except Exception:
        t.ok(False, "test script raised", traceback.format_exc().replace("\n", "\n# "))
    t.done()
