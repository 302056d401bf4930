"""The Syft kernel speaks the Jupyter protocol like any IPython kernel (jupyter_kernel_test)."""

from __future__ import annotations

import os
import tempfile

import jupyter_kernel_test
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import start_new_kernel


class SyftKernelConformance(jupyter_kernel_test.KernelTests):
    kernel_name = "syft"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [  # noqa: RUF012 (jupyter_kernel_test's own class attributes)
        {"text": "zi", "matches": {"zip"}},
        {"text": "%syft who", "matches": {"whoami"}},
        {"text": "%%request *", "matches": {"*/"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]  # noqa: RUF012
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]  # noqa: RUF012
    invalid_code_samples = ["import = 7q"]  # noqa: RUF012
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}]  # noqa: RUF012
    code_display_data = [  # noqa: RUF012
        {"code": "from IPython.display import HTML, display; display(HTML('<b>t</b>'))",
         "mime": "text/html"},
        {"code": "%syft whoami", "mime": "text/html"},
    ]  # fmt: skip
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    @classmethod
    def setUpClass(cls) -> None:
        cls.home = tempfile.TemporaryDirectory()
        env = {**os.environ, "JUPYTER_SYFT_HOME": cls.home.name}
        cls.km, cls.kc = start_new_kernel(kernel_name=cls.kernel_name, env=env)

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        cls.home.cleanup()

    def test_kernelspec_is_installed(self) -> None:
        spec = KernelSpecManager().get_kernel_spec("syft")
        assert spec.display_name == "Syft (Python 3)"
        assert spec.argv[1:3] == ["-m", "jupyter_syft.kernel"]
        assert spec.language == "python"
