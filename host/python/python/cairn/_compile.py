"""The compile worker of cairn's policy host: ``python -m cairn._compile`` (not an API).

A WebAssembly policy that is not in the compile cache is compiled in a child process, so the
``[sandbox]`` compile deadline (``compile_timeout_ms``) and memory limit (``compile_memory_mib``)
can stop it. The ``cairn`` command runs itself as that child; a saver made from Python runs this
module with ``sys.executable``. It reads one request on stdin, compiles, writes the artifact where
the request says, and exits with the status the host reads (0 compiled, 2 not a valid component,
3 a bad request, 4 the compiler panicked).
"""

import sys

import cairn

if __name__ == "__main__":
    sys.exit(cairn._require_native()._serve_compile_worker())
