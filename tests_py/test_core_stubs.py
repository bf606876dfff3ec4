"""python/spattn/_core.pyi is complete: every public name of the compiled module has a stub, every
stub names something that exists, and each parameter class lists exactly the C++ fields."""

import ast
import inspect
from pathlib import Path

import spattn
from spattn import _core

STUB = ast.parse((Path(spattn.__file__).parent / "_core.pyi").read_text())


def stub_names():
    out = {}
    for node in STUB.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            out[node.name] = node
    return out


def test_stub_lists_every_public_name_of_core():
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert set(stub_names()) == public


def test_function_stubs_match_signatures():
    for name, node in stub_names().items():
        if isinstance(node, ast.FunctionDef):
            doc = getattr(_core, name).__doc__ or ""
            for arg in node.args.args:
                assert f"{arg.arg}:" in doc.splitlines()[0] or arg.arg in doc, (name, arg.arg)


def test_parameter_class_stubs_list_the_cpp_fields():
    for name, node in stub_names().items():
        cls = getattr(_core, name)
        if not (isinstance(node, ast.ClassDef) and hasattr(cls, "field_names")):
            continue
        annotated = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
        assert annotated == cls.field_names(), name
        assert inspect.isclass(cls)
