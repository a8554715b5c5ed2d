"""Documentation: the Sphinx build (warnings are errors) and the facts the pages state."""

import ast
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sklcrt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_COMMANDS = (
    "pip install -e . && sklcrt demo --out sklcrt_demo",
    'pip install -e ".[test]" && pytest',
)


def _load_conf():
    spec = importlib.util.spec_from_file_location("sklcrt_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def _autosummary_entries() -> list[str]:
    """Fully qualified names listed in the autosummary tables of docs/api.rst."""
    names, module, in_table = [], None, False
    for line in (DOCS / "api.rst").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith(".. currentmodule::"):
            module = stripped.split("::", 1)[1].strip()
            in_table = False
        elif stripped.startswith(".. autosummary::"):
            in_table = True
        elif in_table and line.startswith("   ") and stripped and not stripped.startswith(":"):
            names.append(f"{module}.{stripped}")
        elif in_table and stripped and not line.startswith("   "):
            in_table = False
    return names


def _resolve(qualname: str):
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _public_modules() -> list[str]:
    found = []
    for info in pkgutil.walk_packages(sklcrt.__path__, prefix="sklcrt."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        found.append(info.name)
    return found


def _module_all(name: str) -> list[str]:
    """``__all__`` read from the source, so modules are listed even if importing one fails."""
    spec = importlib.util.find_spec(name)
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


# ---------------------------------------------------------------------- API reference
def test_every_autosummary_entry_is_a_real_object():
    entries = _autosummary_entries()
    assert len(entries) > 40
    assert len(entries) == len(set(entries)), "an object is listed twice in docs/api.rst"
    missing = []
    for qualname in entries:
        try:
            _resolve(qualname)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{qualname}: {exc}")
    assert not missing, "docs/api.rst lists objects that do not exist:\n" + "\n".join(missing)


def test_every_public_object_is_in_the_api_reference():
    entries = set(_autosummary_entries())
    documented = set()
    for qualname in entries:
        try:
            documented.add(id(_resolve(qualname)))
        except (ImportError, AttributeError):
            pass
    undocumented = []
    for module in _public_modules():
        for name in _module_all(module):
            if f"{module}.{name}" in entries:
                continue
            obj = getattr(importlib.import_module(module), name, None)
            if callable(obj) and id(obj) in documented:  # re-exported, e.g. sklcrt.statistics
                continue
            undocumented.append(f"{module}.{name}")
    for name in getattr(sklcrt, "__all__", []):  # the top-level re-exports
        obj = getattr(sklcrt, name, None)
        if callable(obj) and id(obj) not in documented:
            undocumented.append(f"sklcrt.{name}")
    assert not undocumented, "add these public objects to docs/api.rst: " + ", ".join(undocumented)


# ---------------------------------------------------------------------- page content
def test_installation_page_has_the_readme_commands():
    text = (DOCS / "installation.rst").read_text()
    for command in README_COMMANDS:
        assert command in text
    readme = ROOT / "README.md"
    if readme.exists():
        for command in README_COMMANDS:
            assert command in readme.read_text(), f"README.md lacks {command!r}"


def test_user_guide_states_recommended_settings_and_real_defaults():
    from sklcrt.resampling import DEFAULT_RESAMPLING_KWARGS, RECOMMENDED_HIGH_MOI_KWARGS

    text = (DOCS / "user_guide.rst").read_text()
    start = text.index('   resampling_method="stratified_perm",\n   resampling_kwargs=dict(')
    block = text[start : text.index("\n   )\n", start) + 6]
    body = block.split("resampling_kwargs=", 1)[1]
    recommended = eval(body, {"dict": dict})  # noqa: S307 - our own docs
    assert recommended == {**RECOMMENDED_HIGH_MOI_KWARGS, "batch_key": "batch"}
    assert 'burden_key="log1p_grna_n_nonzero_assign"' in text
    # the defaults the guide quotes are the library's defaults (burden bins off)
    assert DEFAULT_RESAMPLING_KWARGS["burden_key"] is None
    for key, value in DEFAULT_RESAMPLING_KWARGS.items():
        quoted = f"``{key}={value!r}``".replace("'", '"')
        assert quoted in text, f"user_guide.rst should state the default {quoted}"


def test_data_contract_names_the_anndata_keys():
    text = (DOCS / "data_contract.rst").read_text()
    for key in (
        'obsm["cnmf_usage"]',
        'obsm["covar"]',
        'obsm["guide_assignment"]',
        'uns["guide_names"]',
        'uns["guide2gene"]',
        "log1p_non_ntc_guides_per_cell",
        "log1p_grna_n_nonzero_assign",
        "non_ntc_guides_per_cell",
        "grna_n_nonzero_assign",
    ):
        assert key in text, key
    from sklcrt.runners import RESULT_COLUMNS

    for column in [*RESULT_COLUMNS, "p_adj", "significant"]:
        assert f"``{column}``" in text, f"the results table lacks column {column}"


def _section(text: str, title: str) -> str:
    """The body of the reST section ``title`` (up to the next section of the same level)."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines[:-1]) if line == title and set(lines[i + 1]) == {"-"}
    )
    end = next(
        (
            i
            for i in range(start + 2, len(lines) - 1)
            if lines[i] and set(lines[i + 1]) == {"-"} and len(lines[i + 1]) == len(lines[i])
        ),
        len(lines),
    )
    return "\n".join(lines[start + 2 : end])


def _code_blocks(text: str, language: str) -> list[str]:
    """The dedented bodies of the ``.. code-block:: language`` directives in ``text``."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == f".. code-block:: {language}":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i][3:])
                i += 1
            blocks.append("\n".join(body).strip("\n") + "\n")
        else:
            i += 1
    return blocks


def test_user_guide_own_sampler_runs_and_prints_what_it_shows(capsys):
    """The "Your own sampler" section runs as written and prints the table the page shows."""
    section = _section((DOCS / "user_guide.rst").read_text(), "Your own sampler")
    code = _code_blocks(section, "python")
    assert len(code) == 3, "the class, the check suite and the ParameterGrid comparison"
    namespace: dict = {"__name__": "user_guide_own_sampler"}
    exec(compile("\n".join(code), "user_guide.rst::Your own sampler", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    (shown,) = _code_blocks(section, "text")
    # the same table; the fractions may move by Monte Carlo noise when a random stream changes
    message = f"the page shows\n{shown}\nthe code prints\n{printed}"
    got, want = printed.split(), shown.split()
    assert len(got) == len(want), message
    for g, w in zip(got, want, strict=True):
        if "." in w and w.replace(".", "", 1).isdigit():
            assert abs(float(g) - float(w)) <= 0.05, message
        else:
            assert g == w, message

    sampler = namespace["StratumBernoulliSampler"]
    from sklcrt.samplers import BaseSampler

    assert issubclass(sampler, BaseSampler)
    assert sampler().required_inputs() == frozenset({"strata"})
    table = namespace["table"]
    assert len(table) == 4 and set(table["sampler"]) == {
        "StratifiedPermutationSampler",
        "StratumBernoulliSampler",
    }
    # what the text says: inflated without burden bins, calibrated with them, for both samplers
    without = table[table["n_burden_bins"] == 1]
    with_bins = table[table["n_burden_bins"] == 8]
    assert (without["p < 0.05"] > 0.2).all() and (with_bins["p < 0.05"] < 0.08).all()
    assert with_bins["n_strata"].min() > without["n_strata"].max()


@pytest.mark.slow
def test_user_guide_whole_screen_runs_and_does_what_it_says(tmp_path, monkeypatch, capsys):
    """The guide's "A whole screen, step by step" runs as written; its text holds."""
    import matplotlib.pyplot as plt

    from sklcrt.io import load_results
    from sklcrt.moi import MOI_CHOICES

    section = _section((DOCS / "user_guide.rst").read_text(), "A whole screen, step by step")
    code = _code_blocks(section, "python")
    assert len(code) >= 10, "every step of the walk has its code block"
    monkeypatch.chdir(tmp_path)  # the blocks write screen.h5ad, screen.h5mu, sklcrt_results/
    namespace: dict = {"__name__": "user_guide_whole_screen"}
    try:
        exec(compile("\n".join(code), "user_guide.rst::A whole screen", "exec"), namespace)  # noqa: S102
    finally:
        plt.close("all")
    printed = capsys.readouterr().out
    ns = namespace

    # the table of what moi picks is MOI_CHOICES
    assert MOI_CHOICES["high"]["assignment"]["method"] == "mixture"
    assert MOI_CHOICES["low"]["assignment"]["method"] == "maximum"
    assert MOI_CHOICES["high"]["control_group"] == "complement"
    assert MOI_CHOICES["low"]["control_group"] == "nt_cells"
    assert MOI_CHOICES["low"]["test"] == {"resampling_method": "perm"}
    assert not MOI_CHOICES["high"]["qc"]["remove_cells_w_zero_or_twoplus_grnas"]
    assert MOI_CHOICES["low"]["qc"]["remove_cells_w_zero_or_twoplus_grnas"]
    for choice in MOI_CHOICES.values():  # burden bins are never turned on by moi
        assert "burden_key" not in str(choice["test"])

    # QC subsets a copy; the user's object keeps every cell
    adata, screen, qc = ns["adata"], ns["screen"], ns["qc"]
    assert adata.n_obs == 3000 and screen.n_obs == qc.n_pass < adata.n_obs
    assert "pass_cellwise_qc" in adata.obs
    # the pair counts the comment shows, and the shipped pairs the text describes
    assert "10 590 47" in printed
    assert len(ns["positive_pairs"]) == 5 and len(ns["discovery_pairs"]) == 60
    assert ns["n_pass"] == 60
    # calibration sized like the passing discovery pairs, every drawn pair tested, calibrated
    ntc = ns["ntc"]
    assert len(ntc) == ns["n_pass"] and ntc["pass_qc"].all()
    summary = ns["calibration_summary"](ntc)
    assert summary["n_bh_discoveries"] == 0 and summary["frac_below_0.01"] <= 0.05
    # power: tiny skew-normal p-values and knock-downs; Bonferroni integration names a gRNA
    power = ns["power"]
    assert (power["pvalue"] < 1e-6).all() and (power["effect"] < 0).all()
    assert (power["pvalue_method"] == "skew_normal").all()
    assert ns["per_grna"]["best_guide"].notna().all()
    # discovery: every pair passes QC; the positive controls' own genes are found
    discovery = ns["discovery"]
    assert discovery["pass_qc"].sum() == ns["n_pass"]
    found = set(zip(discovery.query("significant")["grna_target"],
                    discovery.query("significant")["response"], strict=True))  # fmt: skip
    assert set(zip(power["grna_target"], power["response"], strict=True)) <= found
    # stored with the data under the default keys, with their parameters
    stored = {k for k in screen.uns if k.startswith("sklcrt_")}
    assert stored == {"sklcrt_calibration", "sklcrt_power", "sklcrt_power_bonferroni",
                      "sklcrt_discovery"}  # fmt: skip
    table, params = load_results(screen, "sklcrt_discovery")
    assert params["moi"] == "high" and params["alpha"] == 0.1
    assert params["test"]["resampling_method"] == "stratified_perm"
    assert len(table) == len(discovery)
    # the report's folder
    out = tmp_path / "sklcrt_results"
    for name in ("summary.json", "summary.txt", "qc.png", "qc.csv", "calibration.png",
                 "power.png", "volcano.png", "discovery.csv", "assignment.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "cellwise QC:" in printed and "discovery:" in printed


def test_crt_test_exposes_the_nested_parameters_the_guide_names():
    from sklcrt import CRTTest

    params = CRTTest().get_params()
    for name in ("encoder__n_burden_bins", "encoder__n_bins", "propensity__C",
                 "statistic__block_size"):  # fmt: skip
        assert name in params, name
    text = (DOCS / "user_guide.rst").read_text()
    for name in ("encoder__n_burden_bins", "encoder__n_bins", "propensity__C",
                 "statistic__block_size"):  # fmt: skip
        assert f"``{name}``" in text, name


def test_pages_use_the_current_api_spelling():
    """No page tells users about spellings the library no longer has."""
    stale = {
        "sklcrt[plot]": "matplotlib is a core dependency",
        "Y=": "CRTTest.fit takes responses=",
        "p_value": "the column and attribute are pvalue",
        "pvalues_": "the attribute is pvalue_",
    }
    for page in sorted(DOCS.glob("*.rst")):
        text = page.read_text()
        for old, why in stale.items():
            assert not re.search(rf"(?<![\w.]){re.escape(old)}", text), (
                f"{page.name}: {old!r} ({why})"
            )


# ---------------------------------------------------------------------- conf.py hooks
def test_examples_and_validation_pages_list_existing_files(tmp_path):
    conf = _load_conf()
    conf.EXAMPLES = tmp_path / "examples"
    conf.VALIDATION = tmp_path / "validation"
    assert "No example scripts" in conf._examples_rst()
    assert conf._validation_rst() == ""

    conf.EXAMPLES.mkdir()
    (conf.EXAMPLES / "plot_calibration.py").write_text('"""Calibration at high MOI.\n\nMore."""\n')
    (conf.EXAMPLES / "config.toml").write_text('input = "simulate"\n')
    rst = conf._examples_rst()
    assert ".. literalinclude:: ../examples/plot_calibration.py" in rst
    assert "Calibration at high MOI." in rst
    assert ".. literalinclude:: ../examples/config.toml" in rst

    conf.VALIDATION.mkdir()
    (conf.VALIDATION / "calibration.csv").write_text("method,frac\nperm,0.01\n")
    (conf.VALIDATION / "qq_ntc.png").write_bytes(b"\x89PNG")
    (conf.VALIDATION / "notes.txt").write_text("ignored")
    rst = conf._validation_rst()
    assert ":file: _static/validation/calibration.csv" in rst
    assert ".. figure:: _static/validation/qq_ntc.png" in rst
    assert "notes" not in rst


def test_fitted_attribute_in_a_shape_is_escaped():
    conf = _load_conf()
    lines = [
        "labels_ : ndarray of shape (n_strata_,)",
        "basis_ : ndarray of shape (n_cells, rank_)",
        "x : ndarray of shape (`n_features_in_`,)",
        "plain text with trailing_ word",
    ]
    conf._escape_fitted_names_in_shapes(None, "class", "x", None, {}, lines)
    assert lines[0] == r"labels_ : ndarray of shape (n_strata\_,)"
    assert lines[1] == r"basis_ : ndarray of shape (n_cells, rank\_)"
    assert lines[2] == "x : ndarray of shape (`n_features_in_`,)"
    assert lines[3] == "plain text with trailing_ word"


# ---------------------------------------------------------------------- the build
@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx", reason="building the docs needs sphinx: pip install -e '.[docs]'")
    pytest.importorskip("numpydoc", reason="building the docs needs numpydoc (the docs extra)")
    pytest.importorskip(
        "pydata_sphinx_theme", reason="building the docs needs pydata-sphinx-theme (docs extra)"
    )
    out = tmp_path / "html"
    cmd = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(DOCS), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stderr[-6000:]}"
    for page in ("index", "installation", "data_contract", "user_guide", "api", "examples",
                 "validation", "command_line"):  # fmt: skip
        assert (out / f"{page}.html").exists(), page
    generated = out / "api" / "generated"
    assert (generated / "sklcrt.crt.CRTTest.html").exists()
    assert (generated / "sklcrt.plotting.qq_plot.html").exists()
    html = (out / "user_guide.html").read_text()
    assert re.search(r"log1p_non_ntc_guides_per_cell", html)
