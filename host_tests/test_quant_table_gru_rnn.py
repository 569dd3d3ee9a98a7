"""The quant table (host_tests/quant_table.py) for GRU and both RNN cells, and the check that the
table's sanitizer flags catch real bugs."""

from quant_table import make

globals().update(make(("gru", "rnn_tanh", "rnn_relu")))


def test_the_sanitizers_catch_an_overflow_and_signed_overflow(tmp_path):
    """The flags and the finding pattern of the sanitizer test are live: a write one past a
    malloc'd buffer and a signed int overflow are both reported."""
    import os
    import subprocess

    from sanitize import ENV, FINDING, SANITIZE

    bugs = {"heap": "int *p = malloc(3 * sizeof *p); p[argc + 2] = 1; free(p); return 0;",
            "signed": "int x = INT_MAX - 1 + argc; x += argc; return x == 0;"}
    for kind, body in bugs.items():
        source = tmp_path / f"{kind}.c"
        source.write_text("#include <limits.h>\n#include <stdlib.h>\n"
                          f"int main(int argc, char **argv) {{ (void)argv; {body} }}\n")
        exe = tmp_path / kind
        subprocess.run(["gcc", "-std=c99", "-O0", *SANITIZE, str(source), "-o", str(exe)],
                       check=True)
        done = subprocess.run([str(exe)], capture_output=True, text=True,
                              env=dict(os.environ, **ENV), check=False)
        assert done.returncode != 0 and FINDING.search(done.stderr), (kind, done.stderr)
