"""tinyrnn.backend.cformat: the generated files' line breaking, on the long lines long model names
make."""

from __future__ import annotations

from tinyrnn.backend.cformat import WIDTH, wrap

NAME = "m_rnn_tanh_uni_L1_bf_bias_zero_w8a16"


def _tokens(lines: list[str]) -> list[str]:
    """The words of ``lines`` without continuation marks (a comment's `` * ``, a backslash)."""
    words = []
    for k, line in enumerate(lines):
        part = line.strip().removesuffix("\\")
        if k and part.startswith("* ") or part == "*/":
            part = part.removeprefix("*")
        words += part.split()
    return words


def _check(text: str, asm: bool = False) -> list[str]:
    lines = wrap(text, asm=asm).split("\n")
    assert all(len(line) <= WIDTH for line in lines), lines
    return lines


def _same_tokens(text: str, lines: list[str]) -> None:
    assert "".join(_tokens(lines)) == "".join(text.split()), "a character changed"


def test_initializers_break_inside_their_braces_and_continue_under_them():
    row = ", ".join(f"{NAME}_l0_fwd_bx[j][{g}]" for g in range(4))
    text = f"        int32_t ax[4] = {{ {row} }};"
    lines = _check(text)
    _same_tokens(text, lines)
    assert len(lines) > 2
    assert all(line.startswith(" " * 26 + NAME) for line in lines[1:])


def test_a_deep_parameter_list_breaks_again_on_its_continuation_lines():
    text = (f"static int {NAME}_run_impl({NAME}_state_t *s, const int16_t *xq, const float *xf, "
            "int T, int16_t *q0, float *f0, int16_t *q1, float *f1)")
    lines = _check(text)
    _same_tokens(text, lines)
    assert len(lines) >= 3
    column = lines[0].index("(") + 1
    assert all(line[:column].strip() == "" for line in lines[1:])


def test_sums_break_before_an_operator_outside_brackets():
    text = (f"        const float pre_n = {NAME}_l0_fwd_b_n[j] "
            f"+ tr_dot({NAME}_l0_fwd_w_n[j], xh, 5);")
    lines = _check(text)
    _same_tokens(text, lines)
    assert lines[1].lstrip().startswith("+ tr_dot(")


def test_a_function_header_breaks_after_its_parenthesis_when_nothing_else_fits():
    name = "m_lstm_proj_bi_L3_tf_nobias_zero_w16a16"
    text = f"static const int16_t *{name}_input_at({name}_state_t *s, const int16_t *x_t, int t)"
    lines = _check(text)
    _same_tokens(text, lines)
    assert lines[0].endswith("_input_at(") and lines[1].startswith(" " * 8 + name)


def test_a_long_if_return_gets_braces():
    P = NAME.upper()
    lines = _check(f"    if (T < 1 || T > {P}_MAX_SEQ_LEN) return {P}_ERR_SEQ_LEN;")
    assert lines[0].endswith("{") and lines[-1] == "    }"
    assert lines[-2] == f"        return {P}_ERR_SEQ_LEN;"


def test_a_define_keeps_its_comment_above_it():
    P = NAME.upper()
    comment = f"/* values {NAME}_step writes and more words */"
    lines = _check(f"#define {P}_STEP_OUTPUT_SIZE 7 {comment}")
    assert lines == [comment, f"#define {P}_STEP_OUTPUT_SIZE 7"]


def test_assembler_statements_continue_with_a_backslash():
    kernel = f"{NAME}_v6m_unit4_x5_h7_bx"
    text = f"    .size {kernel}, . - {kernel}"
    lines = _check(text, asm=True)
    _same_tokens(text, lines)
    assert lines[0].endswith(", \\") and len(lines) == 2


def test_comments_break_between_formulas_not_inside_them():
    text = ("/* sigmoid_wide(x), x in Q3.20, in Q0.15: T[k] = sigmoid(k / 64) in Q0.15, "
            "k = 0..512; u = min(|x|, 8388607), i = u >> 14, f = u & 16383, "
            "p = T[i] + rshift_round((T[i+1] - T[i]) * f, 14); p for x >= 0, "
            "32768 - p for x < 0 */")
    lines = _check(text)
    _same_tokens(text, lines)
    for line in lines:
        body = line.lstrip(" /*").rstrip(" */")
        assert not body.startswith(("=", ">>", "<", "&", "+ ")), line
        assert not body.endswith((" =", " >>", " <", " &", " +")), line
    assert lines[-1].endswith("*/") and lines[-1].strip() != "*/"
