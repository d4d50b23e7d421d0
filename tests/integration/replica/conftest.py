import sys
from pathlib import Path

# The serving tests' model builders (ONNX graphs, uploads) serve the replica tests too.
sys.path.insert(0, str(Path(__file__).parents[1] / "serving"))
