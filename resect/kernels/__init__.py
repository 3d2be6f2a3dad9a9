"""Masked-expert and statistics kernels (`resect.kernels`).

Their sources live in the repository's top-level `kernels/` folder, which deliberately has no
`__init__.py`: run from the repository root, where the current folder is on `sys.path`, a regular
package named `kernels` would hide Hugging Face's `kernels` distribution (transformers imports it),
while a folder without one is at most a namespace portion, which Python ranks below every installed
package. A wheel installs the sources here; a source checkout or an editable install adds the
top-level folder to this package's path.
"""

from pathlib import Path

_sources = Path(__file__).resolve().parent.parent.parent / "kernels"
if (_sources / "dispatch.py").is_file() and str(_sources) not in __path__:
    __path__.append(str(_sources))
