"""Reads the device through pynvml (NVIDIA's own NVML bindings) and prints it in the form
tests/cuda/device_query.cu uses, plus NVML-only facts."""
import pynvml

pynvml.nvmlInit()
print("driver_version", pynvml.nvmlSystemGetDriverVersion())
print("cuda_driver", pynvml.nvmlSystemGetCudaDriverVersion())
print("count", pynvml.nvmlDeviceGetCount())
h = pynvml.nvmlDeviceGetHandleByIndex(0)
print("name", pynvml.nvmlDeviceGetName(h))
uuid = pynvml.nvmlDeviceGetUUID(h)
print("uuid", uuid)
pci = pynvml.nvmlDeviceGetPciInfo(h)
print("pci", pci.busIdLegacy if isinstance(pci.busIdLegacy, str) else pci.busIdLegacy.decode())
print("pci_long", pci.busId if isinstance(pci.busId, str) else pci.busId.decode())
print("pci_device_id %08x" % pci.pciDeviceId)
major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
print("cc %d.%d" % (major, minor))
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
print("memory", mem.total)
print("memory_used", mem.used)
print("memory_free", mem.free)
mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
print("memory_v2_total", mem2.total)
same = pynvml.nvmlDeviceGetHandleByUUID(uuid)
print("by_uuid_index", pynvml.nvmlDeviceGetIndex(same))
print("processes", len(pynvml.nvmlDeviceGetComputeRunningProcesses(h)))
try:
    pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
    print("temperature reported")
except pynvml.NVMLError_NotSupported:
    print("temperature not_supported")
pynvml.nvmlShutdown()
print("PASS")
