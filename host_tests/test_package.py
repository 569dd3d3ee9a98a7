"""`tinyrnn package`: each library form built or validated offline, and its bad inputs.

Three exports (an LSTM with a dense head in w8a16, a bidirectional two-layer GRU with an
initial state in w16a16, an LSTM with projections and (h0, c0) in float32) are packaged in
every form, and:
- cmake: each package is configured and built on its own with the host's gcc, and all three
  are fetched (FetchContent, from archives) into one firmware project cross-built with an
  arm-none-eabi toolchain file for mps2-an386 and run under QEMU; every example prints the
  host build's outputs (`tinyrnn run-host`), bit for bit;
- arduino: src/ and the example sketch compile warning-free for a Cortex-M4 (the sketch as
  C++ with a stub Arduino.h), and library.properties follows the 1.5 library format;
- platformio: `pio pkg pack` (PlatformIO's own manifest validator, offline) packs each one;
- zephyr: module.yml follows Zephyr's module schema, zephyr/CMakeLists.txt runs under
  `cmake -P` with stub zephyr_library* functions, and Kconfig and prj.conf parse (kconfiglib);
- cmsis-pack: the .pdsc follows PACK.xsd's structure and the listed sources build with the
  include paths it declares;
- C++: nine exported headers compile in one translation unit as C++11..20 under g++ and
  clang++ on the host and arm-none-eabi-g++ for Cortex-M, warning-free.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jinja2
import kconfiglib
import numpy as np
import pytest
import torch
from torch import nn

import tinyrnn
from models import Case, build, flat_numpy
from package_specs import (
    arduino_problems,
    library_json_problems,
    module_yml_problems,
    pdsc_files,
    pdsc_problems,
)
from tinyrnn.cli import main as cli_main
from tinyrnn.errors import TinyRNNError
from tinyrnn.io import load_inputs
from tinyrnn.resources import resource_dir
from tinyrnn.targets import cross
from tinyrnn.targets import toolchain as tools
from tinyrnn.targets.boards import load_board
from tinyrnn.targets.host import load_many
from tinyrnn.targets.package import (
    EXAMPLE_INPUT,
    FORMS,
    PackageOptions,
    check_library_name,
    package,
)

FIXTURES = Path(__file__).parent / "package_fixtures"
BOARD = "mps2-an386"        # Cortex-M4F under QEMU
URL = "https://example.com/kws"
STRICT = ("-Wall", "-Wextra", "-Werror")
PIO = Path(sys.executable).parent / "pio"


class KeywordSpotter(nn.Module):
    """An LSTM whose last step feeds a dense layer: one vector output."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(5, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def _kws() -> tuple[nn.Module, tuple]:
    torch.manual_seed(3)
    return KeywordSpotter().eval(), (torch.randn(4, 7, 5),)


# name -> (model and example arguments, format); the GRU's package takes the user's input
MODELS = {
    "kws_w8a16": (_kws, "w8a16"),
    "gru_w16a16": (lambda: build(Case("gru", True, 2, False, True, True)), "w16a16"),
    "lstm_float32": (lambda: build(Case("lstm_proj", False, 1, True, True, True)), "float32"),
}
USER_INPUT = "gru_w16a16"


def _tool(command, cwd=None, timeout=300) -> str:
    """Run a build tool; fail the test with its output (never a bare CalledProcessError)."""
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (f"$ {' '.join(map(str, command))}\n"
                                  f"{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def _parallel(commands) -> list[str]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_tool, commands))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """name -> (export folder, the forward's example arguments as arrays)."""
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for name, (make, fmt) in MODELS.items():
        model, args = make()
        arrays = flat_numpy(args)
        calibration = None if fmt == "float32" else arrays
        tinyrnn.export(model, args, root / name, format=fmt, name=name, calibration=calibration)
        folders[name] = (root / name, arrays)
    return folders


@pytest.fixture(scope="module")
def packaged(exports, tmp_path_factory):
    """(form, name) -> the package folder, written once."""
    root = tmp_path_factory.mktemp("packages")
    done: dict[tuple[str, str], Path] = {}

    def get(form: str, name: str) -> Path:
        if (form, name) not in done:
            folder, arrays = exports[name]
            out = root / form / name
            inputs = arrays if name == USER_INPUT else None
            url = URL if name == "kws_w8a16" else None
            package(folder, form, out, inputs=inputs, options=PackageOptions(url=url))
            done[form, name] = out
        return done[form, name]

    return get


@pytest.fixture(scope="module")
def expected(exports, packaged) -> dict[str, list[np.ndarray]]:
    """name -> the host build's outputs (run-host) on the example input, flat per output."""
    compiled = load_many([exports[name][0] for name in MODELS])
    result = {}
    for name, model in zip(MODELS, compiled):
        inputs = load_inputs(packaged("cmake", name) / "example" / EXAMPLE_INPUT)
        result[name] = [out.reshape(-1) for out in model.run(*inputs)]  # batch 1: C order
    return result


_VALUE = re.compile(r"^out(\d+)\[(\d+)\] = (\S+) \(0x([0-9a-f]{8})\)$", re.MULTILINE)


def parse_example(console: str, name: str) -> list[np.ndarray]:
    """The outputs an example printed; each decimal must equal its exact hex bits."""
    assert f"{name}: done" in console, console
    values: dict[int, list[np.float32]] = {}
    for match in _VALUE.finditer(console):
        k, i = int(match.group(1)), int(match.group(2))
        value = np.array([int(match.group(4), 16)], np.uint32).view(np.float32)[0]
        assert np.float32(float(match.group(3))) == value, match.group(0)
        assert i == len(values.setdefault(k, [])), match.group(0)
        values[k].append(value)
    return [np.array(values[k], np.float32) for k in sorted(values)]


def assert_outputs(got: list[np.ndarray], want: list[np.ndarray], name: str, atol: float = 0.0):
    assert len(got) == len(want), name
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{name} out{k}"
        if atol == 0.0:
            np.testing.assert_array_equal(g.view(np.uint32), w.view(np.uint32),
                                          err_msg=f"{name} out{k} bits")
        else:
            np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=f"{name} out{k}")


# ---------------------------------------------------------------------------------------------
# cmake


def test_cmake_host_builds_and_the_example_prints_run_host(packaged, expected, tmp_path):
    def build_and_run(name: str) -> str:
        build_dir = tmp_path / name
        _tool(["cmake", "-S", packaged("cmake", name), "-B", build_dir,
               "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_COMPILER=gcc",
               f"-DCMAKE_C_FLAGS={' '.join(STRICT)}"])
        _tool(["cmake", "--build", build_dir])
        return _tool([build_dir / f"tinyrnn_{name}_example"])

    for name in MODELS:
        packaged("cmake", name)  # written here: the fixture is not thread-safe
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        consoles = dict(zip(MODELS, pool.map(build_and_run, MODELS)))
    for name, console in consoles.items():
        assert_outputs(parse_example(console, name), expected[name], name)


def test_cmake_firmware_under_qemu_prints_run_host(packaged, expected, tmp_path):
    """FetchContent (an archive) and add_subdirectory, an arm-none-eabi toolchain file, the
    QEMU harness's startup code and linker script; integer formats equal the host bit for
    bit, float32 within the last bits of libm's expf/tanhf (newlib's, not glibc's)."""
    board = load_board(BOARD)
    firmware = resource_dir("firmware")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(FIXTURES)),
                             undefined=jinja2.StrictUndefined)
    toolchain = tmp_path / "arm-none-eabi.cmake"
    toolchain.write_text(env.get_template("arm-none-eabi.cmake.j2").render(
        board=board, gcc=cross.GCC, ldflags=[*cross.LDFLAGS, "-u", "_printf_float"]))
    linker_script = tools.render_firmware("linker.ld.j2", tmp_path / "linker.ld",
                                          board=board, heap_min=cross.HEAP_MIN)
    fetched, *added = MODELS  # one package as an archive for FetchContent, the others as folders
    archive = tmp_path / f"tinyrnn_{fetched}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(packaged("cmake", fetched), arcname=f"tinyrnn_{fetched}")
    build_dir = tmp_path / "build"
    _tool(["cmake", "-S", FIXTURES / "consumer", "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", f"-DTINYRNN_ARCHIVES={archive}",
           f"-DTINYRNN_FOLDERS={';'.join(str(packaged('cmake', name)) for name in added)}",
           f"-DFIRMWARE_DIR={firmware}", f"-DLINKER_SCRIPT={linker_script}"])
    _tool(["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 1)])
    for name, (_, fmt) in MODELS.items():
        elf = build_dir / f"{name}_app"
        console = _tool([tools.QEMU, "-M", board.qemu_machine, "-nographic", "-monitor", "none",
                         "-serial", "none", "-semihosting-config", "enable=on,target=native",
                         "-kernel", elf], cwd=tmp_path, timeout=60)
        atol = 1e-6 if fmt == "float32" else 0.0
        assert_outputs(parse_example(console, name), expected[name], name, atol=atol)


# ---------------------------------------------------------------------------------------------
# arduino


def test_arduino_library_compiles_for_cortex_m4_and_follows_the_spec(packaged, tmp_path):
    board = load_board(BOARD)
    commands = []
    for name in MODELS:
        library = packaged("arduino", name)
        assert arduino_problems(library, require_url=name == "kws_w8a16") == []
        if name != "kws_w8a16":  # no --url: everything but the url line
            assert arduino_problems(library) == ["required field 'url' is missing"]
        objects = tmp_path / name
        objects.mkdir()
        for source in sorted((library / "src").iterdir()):
            if source.suffix in (".c", ".S"):
                commands.append([cross.GCC, *board.cpu_flags, "-std=gnu11", "-Os", *STRICT,
                                 "-I", library / "src", "-c", source,
                                 "-o", objects / f"{source.name}.o"])
        sketch = library / "examples" / name / f"{name}.ino"
        commands.append(["arm-none-eabi-g++", *board.cpu_flags, "-std=gnu++11", "-Os", *STRICT,
                         "-fno-exceptions", "-fno-rtti", "-I", FIXTURES, "-I", library / "src",
                         "-include", "Arduino.h", "-x", "c++", "-c", sketch,
                         "-o", objects / "sketch.o"])
    _parallel(commands)


# ---------------------------------------------------------------------------------------------
# platformio


def test_platformio_pack_validates_each_manifest(packaged, tmp_path):
    assert PIO.exists(), "platformio is a test dependency (pip install -e '.[test]')"
    env = dict(os.environ, PLATFORMIO_CORE_DIR=str(tmp_path / "core"), PLATFORMIO_NO_ANSI="1")
    def pack(name: str) -> set[str]:
        archive = tmp_path / f"{name}.tar.gz"
        done = subprocess.run([PIO, "pkg", "pack", packaged_folders[name], "-o", archive],
                              env=env, capture_output=True, text=True, timeout=120,
                              check=False, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        with tarfile.open(archive) as tar:
            return set(tar.getnames())

    packaged_folders = {name: packaged("platformio", name) for name in MODELS}
    for library in packaged_folders.values():
        assert library_json_problems(library) == []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        members = dict(zip(MODELS, pool.map(pack, MODELS)))
    for name in MODELS:
        assert {"library.json", f"include/{name}.h", f"src/{name}.c",
                f"examples/{name}/platformio.ini", f"examples/{name}/src/main.c"} <= members[name]


# ---------------------------------------------------------------------------------------------
# zephyr


def test_zephyr_module_schema_cmake_and_kconfig(packaged, exports, monkeypatch):
    for name, (_, fmt) in MODELS.items():
        module = packaged("zephyr", name)
        assert module_yml_problems(module) == []
        symbol = f"TINYRNN_{name.upper()}"
        lines = _tool(["cmake", f"-DCONFIG_{symbol}=y",
                       f"-DMODULE_CMAKE={module / 'zephyr' / 'CMakeLists.txt'}",
                       "-P", FIXTURES / "zephyr_stub.cmake"]).splitlines()
        sources = {Path(line[7:]) for line in lines if line.startswith("SOURCE ")}
        assert f"LIBRARY tinyrnn_{name}" in lines
        assert sources == {p.resolve() for p in (module / "src").iterdir()}
        assert f"INCLUDE {(module / 'include').resolve()}" in lines
        off = _tool(["cmake", f"-DMODULE_CMAKE={module / 'zephyr' / 'CMakeLists.txt'}",
                     "-P", FIXTURES / "zephyr_stub.cmake"])
        assert "LIBRARY" not in off  # nothing is built unless the Kconfig option is on

        monkeypatch.setenv("TINYRNN_MODULE", str(module))
        kconf = kconfiglib.Kconfig(str(FIXTURES / "Kconfig.zephyr"), warn_to_stderr=False)
        kconf.warn_assign_undef = True
        assert kconf.warnings == []
        option = kconf.syms[symbol]
        assert option.type == kconfiglib.BOOL and option.str_value == "n"
        kconf.load_config(str(module / "samples" / name / "prj.conf"))
        assert kconf.warnings == []
        assert option.str_value == "y"
        libc = kconf.syms["REQUIRES_FULL_LIBC"].str_value
        assert libc == ("y" if fmt == "float32" else "n")  # expf/tanhf need a full libc


# ---------------------------------------------------------------------------------------------
# cmsis-pack


def test_cmsis_pack_description_archive_and_build(packaged, tmp_path):
    board = load_board(BOARD)
    commands = []
    for name in MODELS:
        pack = packaged("cmsis-pack", name)
        pdsc = pack / f"tinyrnn.{name}.pdsc"
        assert pdsc_problems(pdsc) == []
        on_disk = {str(p.relative_to(pack)) for p in pack.rglob("*") if p.is_file()}
        archive = pack / f"tinyrnn.{name}.1.0.0.pack"
        with zipfile.ZipFile(archive) as zipped:
            assert set(zipped.namelist()) == on_disk - {archive.name}
        files = pdsc_files(pdsc)
        listed = {f for names in files.values() for f in names if not f.endswith("/")}
        assert listed | {pdsc.name} == on_disk - {archive.name}
        includes = [f"-I{pack / folder}" for folder in files["include"]]
        for source in files["source"] + files["template"]:
            commands.append([cross.GCC, *board.cpu_flags, "-std=c99", "-O1", *STRICT,
                             *includes, "-c", pack / source,
                             "-o", tmp_path / f"{name}-{Path(source).stem}.o"])
    _parallel(commands)


# ---------------------------------------------------------------------------------------------
# C++ consumers of the generated header

CPP_EXTRA = [(Case("rnn_relu", True, 2, False, True, True), "w8a16"),
             (Case("lstm", True, 1, False, False, False), "float32"),
             (Case("gru", False, 3, False, True, True), "w8a16"),
             (Case("rnn_tanh", False, 1, True, True, False), "w16a16"),
             (Case("lstm_proj", True, 2, True, True, True), "w16a16"),
             (Case("lstm", False, 2, True, True, True), "w8a16")]


def test_header_compiles_as_cpp11_to_cpp20(exports, tmp_path):
    folders = [folder for folder, _ in exports.values()]
    for case, fmt in CPP_EXTRA:
        model, args = build(case)
        name = f"{case.name}_{fmt}"
        tinyrnn.export(model, args, tmp_path / name, format=fmt, name=name,
                       calibration=None if fmt == "float32" else flat_numpy(args))
        folders.append(tmp_path / name)
    models = []
    for folder in folders:
        manifest = cross.ExportedModel.load(folder)
        models.append({"name": manifest.name, "P": manifest.name.upper(),
                       "fixed": manifest.manifest["format"] != "float32",
                       "state_args": manifest.interface["set_state_args"],
                       "outputs": range(len(manifest.interface["outputs"]))})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(FIXTURES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    unit = tmp_path / "consumer.cpp"
    unit.write_text(env.get_template("cpp_consumer.cpp.j2").render(models=models))
    includes = [f"-I{folder}" for folder in folders]
    cortex_m4 = list(load_board(BOARD).cpu_flags)
    compilers = [["g++"], ["clang++"], ["arm-none-eabi-g++", *cortex_m4]]
    _parallel([[*compiler, f"-std=c++{std}", *STRICT, "-pedantic", *includes, "-c", unit,
                "-o", tmp_path / f"{compiler[0]}-{std}.o"]
               for compiler in compilers for std in (11, 14, 17, 20)])


# ---------------------------------------------------------------------------------------------
# The spec checks can fail


def test_the_spec_checks_catch_violations(packaged, tmp_path):
    arduino = shutil.copytree(packaged("arduino", "kws_w8a16"), tmp_path / "arduino")
    properties = arduino / "library.properties"
    text = properties.read_text()
    properties.write_text(text.replace("name=kws_w8a16", "name=ArduinoKws")
                          .replace("category=Data Processing", "category=AI")
                          .replace("maintainer=", "# maintainer=") + "just words\n")
    problems = "\n".join(arduino_problems(arduino))
    for expected_problem in ("starts with Arduino", "category 'AI'", "'maintainer' is missing",
                             "neither key=value"):
        assert expected_problem in problems

    zephyr = shutil.copytree(packaged("zephyr", "kws_w8a16"), tmp_path / "zephyr")
    module_yml = zephyr / "zephyr" / "module.yml"
    module_yml.write_text(module_yml.read_text().replace("cmake: zephyr", "cmake: src")
                          + "extra: 1\n")
    problems = "\n".join(module_yml_problems(zephyr))
    assert "unknown key 'extra'" in problems and "build.cmake 'src'" in problems

    cmsis = shutil.copytree(packaged("cmsis-pack", "kws_w8a16"), tmp_path / "cmsis")
    pdsc = cmsis / "tinyrnn.kws_w8a16.pdsc"
    pdsc.write_text(pdsc.read_text().replace('Cgroup="kws_w8a16"', 'Cgroup="_k"')
                    .replace('category="doc"', 'category="manual"'))
    (cmsis / "Include" / "kws_w8a16.h").unlink()
    problems = "\n".join(pdsc_problems(pdsc))
    for expected_problem in ("Cgroup '_k'", "category 'manual'", "Include/kws_w8a16.h is listed"):
        assert expected_problem in problems

    pio = shutil.copytree(packaged("platformio", "kws_w8a16"), tmp_path / "pio")
    (pio / "include" / "kws_w8a16.h").unlink()
    assert library_json_problems(pio) == ["headers names kws_w8a16.h, which is not in include/"]


# ---------------------------------------------------------------------------------------------
# Bad input and the command line


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_form_is_refused(exports, tmp_path, capsys):
    code, _, err = _cli(capsys, "package", exports["kws_w8a16"][0], "--as", "meson",
                        "--out", tmp_path / "pkg")
    assert code == 2
    assert "unknown package form 'meson'; choose one of " + ", ".join(FORMS) in err
    assert not (tmp_path / "pkg").exists()


def test_a_non_empty_out_is_kept_unless_forced(exports, tmp_path, capsys):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    argv = ["package", exports["kws_w8a16"][0], "--as", "cmake", "--out", out]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "exists and is not empty; pass --force" in err
    assert (out / "mine.txt").read_text() == "keep me"
    code, printed, _ = _cli(capsys, *argv, "--force")
    assert code == 0 and "CMakeLists.txt" in printed
    assert not (out / "mine.txt").exists() and (out / "CMakeLists.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temporary folder left


@pytest.mark.parametrize(("name", "form", "rule"), [
    ("_kws", "arduino", "Arduino library name '_kws': at most 63 characters"),
    ("ArduinoKws", "arduino", "must not start with \"Arduino\""),
    ("k", "cmsis-pack", "CMSIS-Pack component group (Cgroup) 'k': 2 to 32 characters"),
    ("m" * 51, "platformio", "PlatformIO library name 'mmm"),
    ("a b", "cmake", "CMake target name 'tinyrnn_a b': letters, digits and _ . + - only"),
])
def test_a_name_the_build_system_refuses_names_the_rule(name, form, rule):
    with pytest.raises(TinyRNNError, match=re.escape(rule)):
        check_library_name(name, form)


def test_export_with_a_bad_library_name_fails_before_writing(tmp_path, capsys):
    model, args = _kws()
    archive = tmp_path / "kws.pt2"
    torch.export.save(torch.export.export(model, args), archive)
    code, _, err = _cli(capsys, "export", archive, "--out", tmp_path / "out", "--name",
                        "ArduinoKws", "--format", "float32", "--package", "arduino")
    assert code == 2 and "reserved for official Arduino libraries" in err
    assert not (tmp_path / "out").exists()
    code, _, err = _cli(capsys, "export", archive, "--out", tmp_path / "out", "--url", URL)
    assert code == 2 and "apply to the library of --package FORM" in err
    assert not (tmp_path / "out").exists()
    code, printed, _ = _cli(capsys, "export", archive, "--out", tmp_path / "out", "--name",
                            "kws", "--format", "float32", "--package", "cmsis-pack")
    assert code == 0 and "tinyrnn.kws.1.0.0.pack" in printed
    pack = tmp_path / "out-cmsis-pack"
    assert pdsc_problems(pack / "tinyrnn.kws.pdsc") == []


def test_not_an_export_and_a_tampered_manifest(exports, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, "package", empty, "--as", "cmake", "--out", tmp_path / "a")
    assert code == 2 and "should hold exactly one exported model" in err
    tampered = shutil.copytree(exports["kws_w8a16"][0], tmp_path / "tampered")
    manifest = tampered / "kws_w8a16.json"
    manifest.write_text(manifest.read_text().replace('"sizes"', '"sizes_renamed"'))
    code, _, err = _cli(capsys, "package", tampered, "--as", "cmake", "--out", tmp_path / "b")
    assert code == 2 and "is not a tinyrnn manifest ('sizes' lacks" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_manifest_text_cannot_reach_the_generated_files(exports, tmp_path):
    """The manifest is untrusted: its free text never lands in C, CMake or metadata."""
    tampered = shutil.copytree(exports["kws_w8a16"][0], tmp_path / "tampered")
    manifest_path = tampered / "kws_w8a16.json"
    manifest = json.loads(manifest_path.read_text())
    evil = "*/ int injected; /*\nadd_subdirectory(/)"
    manifest["layers"].append({"kind": evil})
    manifest["layers"][0]["hidden_size"] = evil
    manifest["torch_version"] = evil
    manifest["sizes"][evil] = 1
    manifest_path.write_text(json.dumps(manifest))
    for form in FORMS:
        out = package(tampered, form, tmp_path / form).directory
        for path in out.rglob("*"):
            if path.is_file() and path.suffix != ".pack":
                assert "injected" not in path.read_text(errors="replace"), path


def test_bad_input_or_version_leaves_nothing_behind(exports, tmp_path, capsys):
    folder, arrays = exports["gru_w16a16"]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, arrays[0][..., :3])  # three features instead of five
    out = tmp_path / "out" / "pkg"
    code, _, err = _cli(capsys, "package", folder, "--as", "zephyr", "--out", out,
                        "--input", wrong)
    assert code == 2 and "the model takes 2 input(s)" in err
    code, _, err = _cli(capsys, "package", folder, "--as", "zephyr", "--out", out,
                        "--lib-version", "1.0")
    assert code == 2 and "is not MAJOR.MINOR.PATCH" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_out_must_not_hold_the_export(exports, capsys):
    folder = exports["kws_w8a16"][0]
    code, _, err = _cli(capsys, "package", folder, "--as", "cmake", "--out", folder.parent,
                        "--force")
    assert code == 2 and "holds the export folder" in err
    assert (folder / "kws_w8a16.c").is_file()


def test_every_generated_file_of_the_model_is_packaged(exports, tmp_path):
    """An exporter that writes more files (an assembly kernel, another header) gets them all
    packaged and named in each form's build description; a manifest 'files' list wins."""
    export = shutil.copytree(exports["kws_w8a16"][0], tmp_path / "export")
    (export / "kws_w8a16_kernels.S").write_text("/* kernels */\n")
    (export / "kws_w8a16_tables.h").write_text("/* tables */\n")
    (export / "other_model.c").write_text("/* not this model's */\n")
    places = {"cmake": ("src/", "include/"), "zephyr": ("src/", "include/"),
              "arduino": ("src/", "src/"), "platformio": ("src/", "include/"),
              "cmsis-pack": ("Source/", "Include/")}
    for form, (sources, headers) in places.items():
        files = package(export, form, tmp_path / form).files
        assert {sources + "kws_w8a16_kernels.S", headers + "kws_w8a16_tables.h"} <= set(files)
        assert not any("other_model" in f for f in files)
    assert "src/kws_w8a16_kernels.S" in (tmp_path / "cmake" / "CMakeLists.txt").read_text()
    assert "LANGUAGES C ASM" in (tmp_path / "cmake" / "CMakeLists.txt").read_text()
    assert "kws_w8a16_kernels.S" in (tmp_path / "zephyr" / "zephyr" / "CMakeLists.txt").read_text()
    assert pdsc_problems(tmp_path / "cmsis-pack" / "tinyrnn.kws_w8a16.pdsc") == []
    assert "Source/kws_w8a16_kernels.S" in pdsc_files(
        tmp_path / "cmsis-pack" / "tinyrnn.kws_w8a16.pdsc")["source"]

    manifest_path = export / "kws_w8a16.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = ["kws_w8a16.json", "kws_w8a16.h", "kws_w8a16.c"]
    manifest_path.write_text(json.dumps(manifest))
    files = package(export, "cmake", tmp_path / "listed").files
    assert [f for f in files if f.startswith(("src/", "include/"))] == [
        "include/kws_w8a16.h", "src/kws_w8a16.c"]
    manifest["files"].append("../escape.c")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TinyRNNError, match="not this model's generated C: '../escape.c'"):
        package(export, "cmake", tmp_path / "escape")


def test_packaging_again_gives_the_same_bytes(exports, packaged, tmp_path):
    folder, _ = exports["kws_w8a16"]
    for form in FORMS:
        again = package(folder, form, tmp_path / form, options=PackageOptions(url=URL)).directory
        first = packaged(form, "kws_w8a16")
        names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
        assert names == sorted(str(p.relative_to(again)) for p in again.rglob("*")
                               if p.is_file())
        for rel in names:
            assert (first / rel).read_bytes() == (again / rel).read_bytes(), f"{form}: {rel}"
