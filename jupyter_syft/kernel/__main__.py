"""Entry point of the `syft` kernelspec."""

from ipykernel.kernelapp import IPKernelApp

from jupyter_syft.kernel.kernel import SyftKernel

if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=SyftKernel)
