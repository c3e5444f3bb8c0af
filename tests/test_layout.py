"""The import checker (scripts/check_imports.py): the real tree is clean, and the checker can fail."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_imports.py"
_spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
checker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checker)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_real_tree_has_no_circles_and_no_layer_breaks(capsys):
    assert checker.main([]) == 0, capsys.readouterr().out


def test_function_level_import_circle(tmp_path, capsys):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg import b\n    return b\n",
            "pkg/b.py": "import pkg.a\n",
        },
    )
    graph = checker.import_graph(root)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert checker.circles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert checker.main([str(root)]) == 1
    assert capsys.readouterr().out == "circle: pkg.a -> pkg.b -> pkg.a\n"


def test_relative_import_circle(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/x.py": "from ..y import g\n",
            "pkg/y.py": "from .sub.z import h\n",
            "pkg/sub/z.py": "from .x import f\n",
        },
    )
    graph = checker.import_graph(root)
    assert graph["pkg.sub.x"] == {"pkg.y"}
    assert graph["pkg.y"] == {"pkg.sub.z"}
    assert graph["pkg.sub.z"] == {"pkg.sub.x"}
    assert checker.circles(graph) == [["pkg.sub.x", "pkg.y", "pkg.sub.z", "pkg.sub.x"]]


def test_from_package_import_resolves_submodules_and_ignores_outside_modules(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "VERSION = 1\n",
            "pkg/sub.py": "",
            "pkg/user.py": "import os, json.decoder\nfrom os import path\nfrom pkg import sub, VERSION\n",
            "pkg/inner/__init__.py": "from .. import sub\nfrom . import leaf\n",
            "pkg/inner/leaf.py": "",
        },
    )
    graph = checker.import_graph(root)
    assert graph["pkg.user"] == {"pkg.sub", "pkg"}
    assert graph["pkg.inner"] == {"pkg.sub", "pkg.inner.leaf"}
    assert checker.circles(graph) == []


def test_import_under_type_checking_counts(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.b import B\n",
            "pkg/b.py": "from pkg.a import A\n",
        },
    )
    assert checker.circles(checker.import_graph(root)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_module_importing_itself_is_a_circle(tmp_path):
    root = write_tree(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.a\n"})
    assert checker.circles(checker.import_graph(root)) == [["pkg.a", "pkg.a"]]


def test_package_init_is_not_implicitly_imported_by_its_children(tmp_path, capsys):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "def f():\n    return 1\n",
        },
    )
    graph = checker.import_graph(root)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set()}
    assert checker.circles(graph) == []
    assert checker.main([str(root)]) == 0
    assert capsys.readouterr().out == "ok: 2 modules, 1 imports, no circles, no layer breaks\n"


def test_three_module_circle_with_a_chord_visits_every_module(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from pkg import a, c\n",
            "pkg/c.py": "from pkg import a\n",
            "pkg/d.py": "from pkg import a\n",
        },
    )
    assert checker.circles(checker.import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


LAYERED = {
    "tarsier/__init__.py": "",
    "tarsier/cli/__init__.py": "",
    "tarsier/cli/x.py": (
        '"""An application."""\n'
        "from tarsier.models.auto import load\n"
        "from tarsier.models.tarsier.modeling_tarsier import Model\n"
    ),
    "tarsier/models/__init__.py": "",
    "tarsier/models/auto.py": "def load():\n    import tarsier.engine\n",
    "tarsier/models/tarsier/__init__.py": "",
    "tarsier/models/tarsier/modeling_tarsier.py": "",
    "tarsier/engine.py": "from tarsier.cli import x\n",
}


def test_layer_breaks_are_reported_with_their_lines(tmp_path, capsys):
    root = write_tree(tmp_path, LAYERED)
    _, sites = checker.scan(root)
    breaks = [(site.importer, site.imported, site.line, reason) for site, reason in checker.layer_breaks(sites)]
    assert breaks == [
        (
            "tarsier.cli.x",
            "tarsier.models.tarsier.modeling_tarsier",
            3,
            "applications and the engine reach a family through tarsier.models.auto",
        ),
        ("tarsier.engine", "tarsier.cli.x", 1, "the engine never imports applications"),
        ("tarsier.models.auto", "tarsier.engine", 2, "models never import applications or the engine"),
    ]
    assert checker.main([str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "circle: tarsier.cli.x -> tarsier.models.auto -> tarsier.engine -> tarsier.cli.x"
    assert lines[1] == (
        f"{root / 'tarsier/cli/x.py'}:3: tarsier.cli.x imports tarsier.models.tarsier.modeling_tarsier"
        " (applications and the engine reach a family through tarsier.models.auto)"
    )
    assert len(lines) == 4


def test_family_prefix_matches_whole_module_names_only(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "tarsier/__init__.py": "",
            "tarsier/engine/__init__.py": "",
            "tarsier/engine/loop.py": (
                "import tarsier.models.tarsierfoo\n"
                "import tarsier.models.tarsier2.y\n"
                "import tarsier.models.tarsier.x\n"
            ),
            "tarsier/models/tarsierfoo.py": "",
            "tarsier/models/tarsier/x.py": "",
            "tarsier/models/tarsier2/y.py": "",
        },
    )
    _, sites = checker.scan(root)
    assert [site.imported for site in sites] == [
        "tarsier.models.tarsierfoo",
        "tarsier.models.tarsier2.y",
        "tarsier.models.tarsier.x",
    ]
    only_tarsier = [("tarsier.engine", "tarsier.models.tarsier", "family")]
    assert [(site.imported, site.line) for site, _ in checker.layer_breaks(sites, only_tarsier)] == [
        ("tarsier.models.tarsier.x", 3)
    ]
    assert [(site.imported, site.line) for site, _ in checker.layer_breaks(sites)] == [
        ("tarsier.models.tarsier2.y", 2),
        ("tarsier.models.tarsier.x", 3),
    ]


def test_imports_of_missing_modules_in_the_tree_are_reported(tmp_path, capsys):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "VERSION = 1\n",
            "pkg/a.py": (
                "import os, pkg.gone\n"
                "from pkg.old import f\n"
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from .moved import G\n"
                "def h():\n"
                "    import pkg.sub.nope\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/b.py": "from pkg import VERSION, a\nfrom pkg.a import f, h\nfrom . import sub\nimport torch.nn, pkg.sub\n",
        },
    )
    assert [(site.importer, site.imported, site.line) for site in checker.missing_modules(root)] == [
        ("pkg.a", "pkg.gone", 1),
        ("pkg.a", "pkg.old", 2),
        ("pkg.a", "pkg.moved", 5),
        ("pkg.a", "pkg.sub.nope", 7),
    ]
    assert checker.main([str(root)]) == 1
    path = root / "pkg/a.py"
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:1: pkg.a imports pkg.gone (no such module)",
        f"{path}:2: pkg.a imports pkg.old (no such module)",
        f"{path}:5: pkg.a imports pkg.moved (no such module)",
        f"{path}:7: pkg.a imports pkg.sub.nope (no such module)",
    ]


def test_from_package_import_of_a_name_defined_in_its_init_is_not_missing(tmp_path, capsys):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "VERSION = 1\n",
            "pkg/a.py": "from pkg import VERSION\nfrom . import VERSION as V\nimport pkg\nimport pkg.ns\n",
            "pkg/ns/leaf.py": "",  # a package directory without __init__ still exists
        },
    )
    assert checker.missing_modules(root) == []
    assert checker.main([str(root)]) == 0
    assert capsys.readouterr().out == "ok: 3 modules, 1 imports, no circles, no layer breaks\n"


def test_old_import_paths_give_the_same_classes():
    """Code written against earlier releases keeps working: the names the README shows and the two
    module paths users held (``tarsier.model``, ``tarsier.processor``) are the families' classes."""
    import tarsier
    from tarsier.model import Tarsier2ForConditionalGeneration, TarsierForConditionalGeneration
    from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration as V1Model
    from tarsier.models.tarsier.processing_tarsier import TarsierProcessor as V1Processor
    from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration as V2Model
    from tarsier.processor import TarsierProcessor

    assert (TarsierForConditionalGeneration, Tarsier2ForConditionalGeneration, TarsierProcessor) == (V1Model, V2Model, V1Processor)
    assert (tarsier.TarsierForConditionalGeneration, tarsier.TarsierProcessor) == (V1Model, V1Processor)
    for name in tarsier.__all__:
        assert getattr(tarsier, name) is not None
