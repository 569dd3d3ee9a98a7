"""nn.Embedding over a model input of token ids (issue 12 item 2): the model's x is (B, T)
int64 ids, one feature per step at the C API (the id as a float, or as an int16 in the _q API),
looked up in the table by the first layer.

Two models (an Embedding + GRU + Linear over every step, an Embedding + LSTM + Linear on the
last step), each in float32, w8a16 and w16a16, exported and compiled in one host module:
float32 C against the eager torch module, the integer C bit for bit against the integer
reference and the reference against torch by SQNR. An id outside the vocabulary makes the C
return NAME_ERR_INPUT without writing outputs; `tinyrnn verify` reads an ids .npy; max_norm
and vocabularies beyond int16 are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from c_checks import compiler_warnings
from quant_cases import first_mismatch, reference_model, reference_run, sqnr_db
from tinyrnn.api import CalibrationWarning, example_arrays, export_program, quantize_model
from tinyrnn.cells import recurrent_macs
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.commands import verify
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, load_program, read_program, trace
from tinyrnn.ir import Embedding
from tinyrnn.numerics.helpers import TANH_MAX_ERROR, QFormat
from tinyrnn.passes.lower import lower
from tinyrnn.targets.host import load_many
from tinyrnn.targets.profile import macs_per_step, profile

V, D, H, STEPS = 50, 6, 8, 9
TOL = 1e-5
MIN_SQNR_DB = {"w8a16": 45.0, "w16a16": 70.0}
FORMATS = ("float32", "w8a16", "w16a16")


class EmbGRU(nn.Module):
    """Embedding (with a padding_idx, which only changes training) + GRU + Linear per step."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D, padding_idx=0)
        self.rnn = nn.GRU(D, H, batch_first=True)
        self.head = nn.Linear(H, 3)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


class EmbLSTM(nn.Module):
    """Embedding + LSTM + Linear on the last step."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.rnn = nn.LSTM(D, H, batch_first=True)
        self.head = nn.Linear(H, 2)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0][:, -1])


MODELS = {"gru": EmbGRU, "lstm": EmbLSTM}


def ids_of(batch: int, steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(batch, steps), dtype=np.int64)


def torch_out(module: nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(ids)).numpy()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each model, its .pt2 archive (torch.export.save, int64 example ids inside) and the
    program read back from it by the safe reader."""
    root = tmp_path_factory.mktemp("embedding")
    out = {}
    for k, (key, cls) in enumerate(MODELS.items()):
        torch.manual_seed(k)
        module = cls().eval()
        path = root / f"{key}.pt2"
        torch.export.save(trace(module, (torch.from_numpy(ids_of(2, STEPS, k)),)), path)
        out[key] = module, path, load_program(path)
    return out


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    """Every model in every format, compiled in one host module."""
    root = tmp_path_factory.mktemp("embedding-c")
    keys, dirs = [], []
    for k, (key, (_, _, program)) in enumerate(built.items()):
        for fmt in FORMATS:
            folder = root / f"emb_{key}_{fmt}"
            export_program(program, folder, name=f"emb_{key}_{fmt}", format=fmt,
                           calibration=ids_of(32, STEPS, 100 + k) if fmt != "float32" else None)
            keys.append((key, fmt))
            dirs.append(folder)
    return dict(zip(keys, load_many(dirs)))


def test_generated_files_carry_nothing_unused(compiled):
    """clang -Weverything and gcc -Wunused over the lookup helpers and the id checks."""
    sources = [c.folder / f"{c.name}.c" for key, c in compiled.items() if key[0] == "gru"]
    assert compiler_warnings(sources) == []


def test_the_reader_makes_the_embedding_the_first_layer(built):
    module, _, program = built["gru"]
    model = read_program(program)
    layer = model.layers[0]
    assert isinstance(layer, Embedding) and layer.name == "emb"
    assert np.array_equal(layer.weight.data, module.emb.weight.detach().numpy())
    assert model.input_size == 1 and model.vocab == V
    assert model.inputs[0].torch_shape == (2, STEPS) and model.inputs[0].vocab == V
    # the in-process capture reads the same graph form
    captured = read_program(capture(module, (torch.from_numpy(ids_of(2, STEPS, 0)),)))
    assert np.array_equal(captured.layers[0].weight.data, layer.weight.data)


@pytest.mark.parametrize("key", MODELS)
def test_float32_c_equals_torch(key, built, compiled):
    """The C at another length than the archive's, the torch reference rebuilt from the IR
    (what verify runs), the float simulation and the plan, all against the module."""
    module, _, program = built[key]
    model = read_program(program)
    ids = ids_of(4, STEPS + 3, 7)
    got = compiled[(key, "float32")].run(ids)[0]
    want = torch_out(module, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOL, np.abs(got - want).max()
    np.testing.assert_allclose(torchref.run(model, [ids])[0], want, rtol=0, atol=1e-6)
    batch = batch_from_arrays(model, [ids])
    simulated = run_float(model, batch)[0].outputs[0]
    np.testing.assert_allclose(simulated.reshape(want.shape), want, rtol=0, atol=TOL)
    planned = evaluate.run(lower(model, "m"), batch.x)[0]
    np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR)


@pytest.mark.parametrize("key, fmt", [(k, f) for k in MODELS for f in FORMATS[1:]])
def test_integer_c_equals_the_reference_and_tracks_torch(key, fmt, built, compiled):
    module, _, program = built[key]
    c = compiled[(key, fmt)]
    q = reference_model(program, c.manifest)
    ids = ids_of(4, STEPS, 8)
    ints, floats, batch_q, trace_q = reference_run(q, c.manifest["interface"], [ids])
    got = c.run(ids)[0]
    assert np.array_equal(got, floats[0]), first_mismatch(got, floats[0])
    assert np.array_equal(batch_q.x[..., 0], ids)  # the int16 API's x: the ids themselves
    planned = evaluate.run(lower(q.model, "m", q), batch_q.x)[0]  # the plan, in numpy
    assert np.array_equal(planned, trace_q.outputs[0]), first_mismatch(planned,
                                                                      trace_q.outputs[0])
    # the int16 API: the ids themselves in, the reference's integers out
    got_q = c.run_sample_q({"x": ids[0][:, None]})[0]
    want_q = np.reshape(ints[0][0], -1)
    assert np.array_equal(got_q, want_q), first_mismatch(got_q, want_q)
    # the table is int16 in a format that holds its largest value exactly
    table = q.layers[0].table
    assert table.dtype == np.int16
    assert np.abs(q.layers[0].out.dequantize(table) - module.emb.weight.detach().numpy()
                  ).max() <= q.layers[0].out.step / 2
    sqnr = sqnr_db(torch_out(module, ids), floats[0])
    print(f"embedding {key} {fmt}: SQNR {sqnr:.1f} dB against torch")
    assert sqnr > MIN_SQNR_DB[fmt], f"SQNR {sqnr:.1f} dB"


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_id_outside_the_vocabulary_returns_err_input(fmt, compiled):
    c = compiled[("gru", fmt)]
    err = next(e for e in c.api.errors if e.name == "ERR_INPUT")
    assert err.value == -5 and c.api.macro("VOCAB_SIZE") == V
    n_out = c.api.output_lengths(4)[0]
    for bad in (V, -1, 2.5, float("nan")):
        x = np.array([1, 2, bad, 3], dtype=np.float32)
        out = np.full(n_out, 7.0, dtype=np.float32)
        state = c.new_state()
        c.step(state, x[:1])  # a state that is not zero
        before = bytes(c.ffi.buffer(state))
        status = getattr(c.lib, f"{c.name}_run")(
            state, c.ffi.from_buffer("float[]", x), 4, c.ffi.from_buffer("float[]", out))
        assert status == -5, (bad, status)
        assert np.all(out == 7.0)  # nothing written
        y = np.zeros(3, dtype=np.float32)
        status = getattr(c.lib, f"{c.name}_step")(
            state, c.ffi.from_buffer("float[]", x[2:3]), c.ffi.from_buffer("float[]", y))
        assert status == -5, (bad, status)
        assert bytes(c.ffi.buffer(state)) == before  # the state untouched
    if fmt != "float32":
        xq = np.array([1, V, 3], dtype=np.int16)
        outq = np.zeros(c.api.output_lengths(3)[0], dtype=np.int16)
        status = getattr(c.lib, f"{c.name}_run_q")(
            c.new_state(), c.ffi.from_buffer("int16_t[]", xq), 3,
            c.ffi.from_buffer("int16_t[]", outq))
        assert status == -5
    # the host harness refuses such ids before the C, by position
    with pytest.raises(TinyRNNError, match=r"not token ids .* the first is 50 at sample 1, "
                                           r"step 2"):
        ids = ids_of(2, 4, 0)
        ids[1, 2] = V
        c.run(ids)


@pytest.mark.parametrize("fmt", FORMATS)
def test_step_by_step_equals_the_whole_sequence(fmt, compiled):
    """NAME_step, one id at a time, gives NAME_run's outputs (bit for bit in integers)."""
    c = compiled[("gru", fmt)]
    ids = ids_of(1, STEPS, 11)
    whole = c.run(ids)[0][0]
    state = c.new_state()
    steps = np.stack([c.step(state, np.array([t], dtype=np.float32)) for t in ids[0]])
    assert np.array_equal(steps, whole), first_mismatch(steps, whole)


def test_verify_reads_an_ids_npy(built, compiled, tmp_path):
    _, path, _ = built["lstm"]
    ids = tmp_path / "ids.npy"
    np.save(ids, ids_of(3, STEPS + 2, 9))
    for fmt in ("float32", "w8a16"):
        result = verify(path, compiled[("lstm", fmt)].folder, ids)
        assert result.ok, result.text()


def test_the_archives_int64_example_ids_calibrate_without_calibration_data(built):
    _, _, program = built["gru"]
    example = example_arrays(program)
    assert example[0].dtype == np.int64 and example[0].shape == (2, STEPS)
    model = read_program(program)
    with pytest.warns(CalibrationWarning):
        q = quantize_model(model, "w8a16", None, example)
    assert q.input == QFormat(16, 0) and q.ranges.source == "example input"


def test_the_lookup_counts_no_macs_and_profiles_on_ids(compiled):
    """The profile feeds token ids (any other input makes the C return NAME_ERR_INPUT)."""
    c = compiled[("gru", "w8a16")]
    assert c.manifest["layers"][0]["kind"] == "embedding"
    macs = recurrent_macs("gru", D, H, H) + H * 3
    assert macs_per_step(c.manifest) == macs
    result = profile(c.folder, cpu="cortex-m4", measure_run=False)
    assert result.macs_per_step == macs and result.instructions_per_step > 0


def test_max_norm_is_refused_by_name():
    module = nn.Sequential()
    module.emb = nn.Embedding(V, D, max_norm=1.0)
    gru = EmbGRU()
    gru.emb = module.emb
    with pytest.raises(TinyRNNError, match=r"embedding_renorm_.*max_norm=None"):
        read_program(capture(gru.eval(), (torch.from_numpy(ids_of(2, STEPS, 0)),)))


def test_a_vocabulary_beyond_int16_is_refused_for_the_integer_formats(tmp_path):
    module = EmbGRU()
    module.emb = nn.Embedding(2**15 + 1, D)
    program = capture(module.eval(), (torch.from_numpy(ids_of(2, STEPS, 0)),))
    with pytest.raises(TinyRNNError, match=r"32769 token ids; the integer formats take ids "
                                           r"as int16, up to 32768"):
        export_program(program, tmp_path / "big", name="big", format="w8a16",
                       calibration=ids_of(4, STEPS, 1))
    assert not (tmp_path / "big").exists()
