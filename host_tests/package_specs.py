"""Our own checks of package metadata against each format's published rules.

No registry is reachable from CI and no schema file ships in a Debian or PyPI package we can
use (PlatformIO's own validator is used where it runs offline: `pio pkg pack`), so these
functions encode the rules as read from:

- Arduino: the library specification, 1.5 library format rev. 2.2 (arduino-cli
  docs/library-specification.md) and the sketch specification's folder rule;
- Zephyr: the schema of zephyr/module.yml in scripts/zephyr_module.py (keys and types), and
  how that script resolves build.cmake (a folder with CMakeLists.txt) and build.kconfig (a file);
- CMSIS-Pack: the Open-CMSIS-Pack specification's PACK.xsd (element structure, RestrictedString,
  CidPartType, PackVersionType, ComponentVersionType, FileCategoryType).

Each function returns a list of problems (empty when the package follows the rules), so a test
can show every problem at once, and the negative tests can show that each check does fail.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

# ---------------------------------------------------------------------------------------------
# Arduino

ARDUINO_REQUIRED = ("name", "version", "author", "maintainer", "sentence", "paragraph",
                    "category", "url", "architectures")
ARDUINO_CATEGORIES = ("Display", "Communication", "Signal Input/Output", "Sensors",
                      "Device Control", "Timing", "Data Storage", "Data Processing", "Other")
_ARDUINO_VERSION = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)(\.(0|[1-9]\d*))?"
                              r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?")
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def parse_properties(text: str) -> tuple[dict[str, str], list[str]]:
    """A library.properties file's key=value pairs, and its malformed lines."""
    values: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "=" not in line:
            problems.append(f"line {number} is neither key=value nor a # comment: {line!r}")
            continue
        key, value = line.split("=", 1)
        if key in values:
            problems.append(f"line {number} repeats the key {key!r}")
        values[key] = value
    return values, problems


def arduino_problems(folder: Path, require_url: bool = True) -> list[str]:
    """Everything in ``folder`` that breaks the Arduino 1.5 library format."""
    path = folder / "library.properties"
    if not path.is_file():
        return ["no library.properties in the library's root folder"]
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        return ["library.properties starts with a UTF-8 byte order mark"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"library.properties is not UTF-8: {exc}"]
    values, problems = parse_properties(text)
    required = [k for k in ARDUINO_REQUIRED if require_url or k != "url"]
    problems += [f"required field {key!r} is missing" for key in required if key not in values]
    name = values.get("name", "")
    if "name" in values and not (
            re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", name) and re.search("[A-Za-z]", name)
            and len(name) <= 63):
        problems.append(f"name {name!r}: letters, digits, spaces, _ . - only, starting with a "
                        "letter or digit, with a letter, at most 63 characters")
    if name.lower().startswith("arduino"):
        problems.append(f"name {name!r} starts with Arduino (reserved)")
    if "version" in values and not _ARDUINO_VERSION.fullmatch(values["version"]):
        problems.append(f"version {values['version']!r} is not semver")
    for key in ("author", "maintainer", "sentence"):
        if key in values and not values[key].strip():
            problems.append(f"{key} is empty")
    if values.get("maintainer", "").lower().startswith("arduino"):
        problems.append("maintainer starts with Arduino (reserved)")
    if "category" in values and values["category"] not in ARDUINO_CATEGORIES:
        problems.append(f"category {values['category']!r} is not one of the allowed values")
    if "url" in values and not re.fullmatch(r"https?://\S+", values["url"]):
        problems.append(f"url {values['url']!r} is not an http(s) URL")
    if "architectures" in values and not all(
            re.fullmatch(r"\*|[A-Za-z0-9_.-]+", a.strip())
            for a in values["architectures"].split(",")):
        problems.append(f"architectures {values['architectures']!r} is not a comma-separated "
                        "list of architectures (or *)")
    for include in filter(None, (s.strip() for s in values.get("includes", "").split(","))):
        if not (folder / "src" / include).is_file():
            problems.append(f"includes names {include}, which is not in src/")
    if not (folder / "src").is_dir():
        problems.append("no src/ folder (the 1.5 layout keeps sources in src/)")
    if list(folder.glob("*.ino")):
        problems.append("a sketch in the library's root folder")
    examples = folder / "examples"
    for sketch in sorted(p for p in examples.iterdir() if p.is_dir()) if examples.is_dir() else []:
        if not _FOLDER.fullmatch(sketch.name):
            problems.append(f"example folder name {sketch.name!r} breaks the sketch folder rule")
        if not (sketch / f"{sketch.name}.ino").is_file():
            problems.append(f"example {sketch.name} lacks its primary file {sketch.name}.ino")
    return problems


# ---------------------------------------------------------------------------------------------
# PlatformIO (beyond what `pio pkg pack` validates: that what the manifest names exists)


def library_json_problems(folder: Path) -> list[str]:
    """Files and folders library.json names that the package lacks."""
    manifest = json.loads((folder / "library.json").read_text())
    problems = []
    build = manifest.get("build", {})
    include = folder / build.get("includeDir", "include")
    for key in ("srcDir", "includeDir"):
        if key in build and not (folder / build[key]).is_dir():
            problems.append(f"build.{key} {build[key]!r} is not a folder")
    headers = manifest.get("headers", [])
    for header in [headers] if isinstance(headers, str) else headers:
        if not (include / header).is_file():
            problems.append(f"headers names {header}, which is not in {include.name}/")
    for example in manifest.get("examples", []):
        base = folder / example["base"]
        problems += [f"example {example['name']} lacks {name}" for name in example["files"]
                     if not (base / name).is_file()]
    return problems


# ---------------------------------------------------------------------------------------------
# Zephyr

_MODULE_KEYS = {"name": str, "build": dict, "tests": list, "samples": list, "boards": list,
                "blobs": list}
_BUILD_KEYS = {"cmake": str, "kconfig": str, "cmake-ext": bool, "kconfig-ext": bool,
               "sysbuild-cmake": str, "sysbuild-kconfig": str, "sysbuild-cmake-ext": bool,
               "sysbuild-kconfig-ext": bool, "depends": list, "settings": dict}
_SETTINGS = ("board_root", "dts_root", "snippet_root", "soc_root", "arch_root",
             "module_ext_root", "sca_root")


def module_yml_problems(folder: Path) -> list[str]:
    """Everything in ``folder``/zephyr/module.yml that Zephyr's module schema refuses."""
    path = folder / "zephyr" / "module.yml"
    if not path.is_file():
        return ["no zephyr/module.yml"]
    meta = yaml.safe_load(path.read_text())
    if not isinstance(meta, dict):
        return ["module.yml is not a mapping"]
    problems = [f"unknown key {key!r}" for key in meta if key not in _MODULE_KEYS]
    problems += [f"{key} is not a {kind.__name__}" for key, kind in _MODULE_KEYS.items()
                 if key in meta and not isinstance(meta[key], kind)]
    for key in ("tests", "samples", "boards"):
        entries = meta.get(key, [])
        if isinstance(entries, list):
            problems += [f"{key} entry {e!r} is not a string" for e in entries
                         if not isinstance(e, str)]
            problems += [f"{key} entry {e!r} is not a folder of the module" for e in entries
                         if isinstance(e, str) and not (folder / e).is_dir()]
    build = meta.get("build", {})
    if not isinstance(build, dict):
        return problems
    problems += [f"unknown build key {key!r}" for key in build if key not in _BUILD_KEYS]
    problems += [f"build.{key} is not a {kind.__name__}" for key, kind in _BUILD_KEYS.items()
                 if key in build and not isinstance(build[key], kind)]
    if isinstance(build.get("depends"), list):
        problems += [f"build.depends entry {d!r} is not a string" for d in build["depends"]
                     if not isinstance(d, str)]
    if isinstance(build.get("settings"), dict):
        problems += [f"unknown build.settings key {k!r}" for k in build["settings"]
                     if k not in _SETTINGS]
    if isinstance(build.get("cmake"), str) and not (
            folder / build["cmake"] / "CMakeLists.txt").is_file():
        problems.append(f"build.cmake {build['cmake']!r} is not a folder with a CMakeLists.txt")
    if isinstance(build.get("kconfig"), str) and not (folder / build["kconfig"]).is_file():
        problems.append(f"build.kconfig {build['kconfig']!r} is not a file")
    for sample in meta.get("samples", []) if isinstance(meta.get("samples"), list) else []:
        if isinstance(sample, str) and not (folder / sample / "CMakeLists.txt").is_file():
            problems.append(f"sample {sample!r} has no CMakeLists.txt")
    return problems


# ---------------------------------------------------------------------------------------------
# CMSIS-Pack

_RESTRICTED = re.compile(r"[-_A-Za-z0-9]+")
_CID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+()'/\-\s.]+")
_PACK_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
                           r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?")
_COMPONENT_VERSION = re.compile(r"(0|[1-9]\d*)\.[0-9]+(\.[0-9]+)?"
                                r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?")
FILE_CATEGORIES = ("doc", "header", "include", "library", "object", "source", "sourceC",
                   "sourceCpp", "sourceAsm", "linkerScript", "utility", "image", "other",
                   "preIncludeGlobal", "preIncludeLocal", "genSource", "genHeader",
                   "genParams", "genAsset")
FILE_ATTRS = ("config", "template")


def pdsc_problems(pdsc: Path) -> list[str]:
    """Everything in a .pdsc, and in the pack folder beside it, that breaks PACK.xsd's rules."""
    root = ET.parse(pdsc).getroot()
    folder = pdsc.parent
    if root.tag != "package":
        return [f"the root element is {root.tag}, not package"]
    problems = []
    if not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", root.get("schemaVersion", "")):
        problems.append("package lacks a schemaVersion of the form major.minor[.patch]")
    children = [child.tag for child in root]
    problems += [f"<{tag}> appears {children.count(tag)} times" for tag in set(children)
                 if children.count(tag) > 1]
    for tag in ("name", "vendor", "description", "url", "releases"):
        if tag not in children:
            problems.append(f"required element <{tag}> is missing")
    for tag in ("name", "vendor"):
        text = root.findtext(tag) or ""
        if tag in children and not _RESTRICTED.fullmatch(text):
            problems.append(f"<{tag}> {text!r} is not a RestrictedString ([-_A-Za-z0-9]+)")
    if not (root.findtext("description") or "").strip():
        problems.append("<description> is empty")
    releases = root.findall("releases/release")
    if not releases:
        problems.append("<releases> holds no <release>")
    problems += [f"release version {r.get('version')!r} is not major.minor.patch"
                 for r in releases if not _PACK_VERSION.fullmatch(r.get("version", ""))]
    expected = f"{root.findtext('vendor')}.{root.findtext('name')}.pdsc"
    if pdsc.name != expected:
        problems.append(f"the file is {pdsc.name}; a pack description is named {expected}")
    for description in root.findall("taxonomy/description"):
        if not _CID_PART.fullmatch(description.get("Cclass", "")):
            problems.append("a taxonomy description lacks a valid Cclass")
    components = root.findall("components/component")
    if not components:
        problems.append("<components> holds no <component>")
    for component in components:
        problems += _component_problems(component, folder)
    return problems


def _component_problems(component: ET.Element, folder: Path) -> list[str]:
    problems = []
    for attribute in ("Cclass", "Cgroup"):
        value = component.get(attribute, "")
        if not (_CID_PART.fullmatch(value) and 2 <= len(value) <= 32):
            problems.append(f"component {attribute} {value!r} is not a CidPartType "
                            "(2 to 32 characters starting with a letter or digit)")
    if not _COMPONENT_VERSION.fullmatch(component.get("Cversion", "")):
        problems.append(f"component Cversion {component.get('Cversion')!r} is not a version")
    if not (component.findtext("description") or "").strip():
        problems.append("component lacks a <description>")
    files = component.findall("files/file")
    if not files:
        problems.append("component lists no files")
    for item in files:
        name, category = item.get("name", ""), item.get("category")
        if category not in FILE_CATEGORIES:
            problems.append(f"file {name}: category {category!r} is not a FileCategoryType")
        if item.get("attr") is not None and item.get("attr") not in FILE_ATTRS:
            problems.append(f"file {name}: attr {item.get('attr')!r} is not config or template")
        if item.get("attr") == "template" and not item.get("select"):
            problems.append(f"file {name}: a template needs a select= description")
        if category == "include":
            if not name.endswith("/") or not (folder / name).is_dir():
                problems.append(f"include {name!r} is not a folder of the pack ending in /")
        elif not (folder / name).is_file():
            problems.append(f"file {name} is listed but not in the pack")
    return problems


def pdsc_files(pdsc: Path) -> dict[str, list[str]]:
    """The component files of a .pdsc by category (names as listed)."""
    by_category: dict[str, list[str]] = {}
    for item in ET.parse(pdsc).getroot().findall("components/component/files/file"):
        key = item.get("category", "")
        if item.get("attr") == "template":
            key = "template"
        by_category.setdefault(key, []).append(item.get("name", ""))
    return by_category
