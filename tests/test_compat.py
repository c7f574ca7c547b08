"""The torchvision guard: open_clip and timm import on a CPU-only host."""

import subprocess
import sys

PLAIN = "import torchvision"
GUARDED = (
    "from raysvc._compat import import_torchvision, skipped_op_registrations as before\n"
    "import_torchvision()\n"
    "import raysvc._compat as c, open_clip, timm\n"
    "timm.create_model('resnet18', pretrained=False, num_classes=3)\n"
    "print(before, c.skipped_op_registrations)\n"
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_open_clip_and_timm_import_through_the_guard():
    plain = _python(PLAIN)
    guarded = _python(GUARDED)
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    before, after = guarded.stdout.split()
    assert before == "False"
    # the guard steps in exactly when the plain import fails, never otherwise
    assert after == str(plain.returncode != 0)


def test_guard_reraises_unrelated_errors(monkeypatch):
    import raysvc._compat as compat

    def broken(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("something else entirely")
        return real_import(name, *args, **kwargs)

    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr("builtins.__import__", broken)
    try:
        compat.import_torchvision()
    except RuntimeError as exc:
        assert "something else" in str(exc)
    else:
        raise AssertionError("an unrelated RuntimeError was swallowed")
