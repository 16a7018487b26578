"""VMTemplate: a reusable, versioned virtual machine definition."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from virtfleet.api.base import AnnotationMap, BaseStatus, DNSLabel, LabelMap, Model, ObjectName, Quantity, cel

RunStrategy = Literal["Always", "Halted", "Manual", "RerunOnFailure", "Once"]
EvictionStrategy = Literal["LiveMigrate", "LiveMigrateIfPossible", "External", "None"]
HugepageSize = Literal["2Mi", "1Gi"]
HTTPURL = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)]
CPUModel = Annotated[str, StringConstraints(min_length=1, max_length=128)]


# The rendered VM's cloud-init disk and volume; no template disk may share the name when cloudInit is set.
CLOUD_INIT_DISK = "cloudinit"


class CPU(Model):
    """Guest CPU topology and placement policy. vCPUs = sockets x cores x threads."""

    model_config = cel(
        {
            "rule": "!has(self.maxSockets) || self.maxSockets >= self.sockets",
            "message": "cpu.maxSockets must be at least cpu.sockets",
            "fieldPath": ".maxSockets",
        },
        {
            "rule": "!self.isolateEmulatorThread || self.policy == 'dedicated'",
            "message": "cpu.isolateEmulatorThread requires cpu.policy 'dedicated'",
            "fieldPath": ".isolateEmulatorThread",
        },
    )

    sockets: int = Field(default=1, ge=1, le=64, description="Guest CPU sockets.")
    cores: int = Field(default=1, ge=1, le=256, description="Cores per socket.")
    threads: int = Field(default=1, ge=1, le=8, description="Threads per core.")
    model: CPUModel | None = Field(
        default=None,
        description="CPU model exposed to the guest (e.g. host-passthrough, Skylake-Server); KubeVirt's default when unset.",
    )
    policy: Literal["shared", "dedicated"] = Field(
        default="shared",
        description="shared: vCPUs are time-sliced and may be oversubscribed; dedicated: each vCPU is pinned to a host core (Guaranteed QoS, never oversubscribed).",
    )
    isolate_emulator_thread: bool = Field(
        default=False,
        description="Give QEMU's emulator thread a dedicated core of its own (needs policy dedicated).",
    )
    max_sockets: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Upper bound for CPU hot-plug (KubeVirt cpu.maxSockets); unset disables hot-plug.",
    )

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


class Memory(Model):
    """Guest memory."""

    guest: Quantity = Field(description="Memory the guest sees, e.g. 4Gi.")
    hugepages: HugepageSize | None = Field(
        default=None, description="Back guest memory with hugepages of this size (2Mi or 1Gi)."
    )
    max_guest: Quantity | None = Field(
        default=None,
        description="Upper bound for memory hot-plug (KubeVirt memory.maxGuest); unset disables hot-plug.",
    )


class NUMA(Model):
    """Guest NUMA topology."""

    guest_mapping_passthrough: bool = Field(
        default=False,
        description="Mirror the host NUMA cells the vCPUs are pinned to into the guest (needs dedicated CPUs and hugepages).",
    )


class PVCSource(Model):
    """A PersistentVolumeClaim to clone."""

    name: ObjectName = Field(description="Name of the source PersistentVolumeClaim.")
    namespace: DNSLabel | None = Field(
        default=None, description="Namespace of the source; the template's namespace when unset."
    )


class SnapshotSource(Model):
    """A VolumeSnapshot to clone."""

    name: ObjectName = Field(description="Name of the source VolumeSnapshot.")
    namespace: DNSLabel | None = Field(
        default=None, description="Namespace of the source; the template's namespace when unset."
    )


class DiskSource(Model):
    """Where a disk's content comes from: exactly one field is set."""

    model_config = cel(
        {
            "rule": "[has(self.containerImage), has(self.http), has(self.clonePVC),"
            " has(self.cloneSnapshot), has(self.blank)].filter(x, x).size() == 1",
            "message": "exactly one of containerImage, http, clonePVC, cloneSnapshot or blank must be set",
        }
    )

    container_image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = Field(
        default=None, description="A containerDisk image, e.g. quay.io/containerdisks/fedora:40 (ephemeral)."
    )
    http: HTTPURL | None = Field(default=None, description="Import a disk image from this HTTP(S) URL.")
    clone_pvc: PVCSource | None = Field(
        default=None, alias="clonePVC", description="Clone a golden PersistentVolumeClaim."
    )
    clone_snapshot: SnapshotSource | None = Field(default=None, description="Clone a VolumeSnapshot.")
    blank: bool | None = Field(default=None, description="An empty disk of the given size.")


class Disk(Model):
    """A disk attached to the VM."""

    name: DNSLabel = Field(description="Disk name, unique within the template.")
    source: DiskSource = Field(description="Where the disk's content comes from.")
    size: Quantity | None = Field(
        default=None, description="Disk size; required for every source but containerImage."
    )
    storage_class: ObjectName | None = Field(
        default=None, description="StorageClass of the volume; the cluster default when unset."
    )
    provisioning: Literal["thin", "thick"] = Field(
        default="thin", description="thin: allocate on write; thick: preallocate the whole size (CDI)."
    )
    bus: Literal["virtio", "sata", "scsi"] = Field(default="virtio", description="Disk bus.")
    boot_order: int | None = Field(default=None, ge=1, le=64, description="Boot order; lowest boots first.")


class Interface(Model):
    """A network interface."""

    model_config = cel(
        {
            "rule": "self.type == 'nat' ? !has(self.network) : has(self.network)",
            "message": "network is required for bridge, sriov and isolated interfaces and not allowed for nat",
            "fieldPath": ".network",
        }
    )

    name: DNSLabel = Field(description="Interface name, unique within the template.")
    type: Literal["nat", "bridge", "sriov", "isolated"] = Field(
        description="nat: masquerade on the pod network; bridge: bridge binding on a Multus network;"
        " sriov: an SR-IOV virtual function; isolated: a Multus network with no uplink.",
    )
    network: ObjectName | None = Field(
        default=None, description="NetworkAttachmentDefinition name (namespace/name allowed by Multus)."
    )
    mac_address: Annotated[str, StringConstraints(pattern=r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")] | None = (
        Field(default=None, description="Fixed MAC address.")
    )
    model: Literal["virtio", "e1000e"] = Field(default="virtio", description="NIC model.")


class HostDevice(Model):
    """A GPU or other host device passed through to the guest."""

    name: DNSLabel = Field(description="Device name inside the VM spec, unique within the template.")
    device_name: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Resource name the device plugin advertises, e.g. nvidia.com/GA102GL_A10."
    )


class SecretRef(Model):
    """A reference to a Secret in the same namespace."""

    name: ObjectName = Field(description="Secret name.")


class CloudInit(Model):
    """cloud-init (NoCloud) user data: inline or from a Secret, not both."""

    model_config = cel(
        {
            "rule": "has(self.userData) != has(self.userDataSecretRef)",
            "message": "set exactly one of cloudInit.userData or cloudInit.userDataSecretRef",
        }
    )

    user_data: Annotated[str, StringConstraints(max_length=32768)] | None = Field(
        default=None, description="Inline user data (#cloud-config ...)."
    )
    user_data_secret_ref: SecretRef | None = Field(
        default=None, description="Secret whose 'userdata' key holds the user data."
    )


class VMTemplateSpec(Model):
    """What every VM made from this template is made of."""

    model_config = cel(
        {
            "rule": "!has(self.numa) || !self.numa.guestMappingPassthrough ||"
            " (self.cpu.policy == 'dedicated' && has(self.memory.hugepages))",
            "message": "numa.guestMappingPassthrough requires cpu.policy 'dedicated' and memory.hugepages",
            "fieldPath": ".numa.guestMappingPassthrough",
        },
        {
            "rule": f"!has(self.cloudInit) || !self.disks.exists(d, d.name == '{CLOUD_INIT_DISK}')",
            "message": f"the disk name '{CLOUD_INIT_DISK}' is taken by the cloud-init disk when cloudInit is set",
            "fieldPath": ".disks",
        },
        {
            "rule": "!has(self.interfaces) || self.interfaces.filter(i, i.type == 'nat').size() <= 1",
            "message": "at most one interface may be nat: a VM has one pod network",
            "fieldPath": ".interfaces",
        },
    )

    description: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Free text for people."
    )
    cpu: CPU = Field(default_factory=CPU, description="CPU topology and policy.")
    memory: Memory = Field(description="Guest memory.")
    numa: NUMA | None = Field(default=None, description="Guest NUMA topology.")
    disks: list[Disk] = Field(
        min_length=1,
        max_length=32,
        description="Disks; the first with the lowest bootOrder boots.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    interfaces: list[Interface] = Field(
        default_factory=list,
        max_length=16,
        description="Network interfaces; none means no network.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    host_devices: list[HostDevice] = Field(
        default_factory=list,
        max_length=16,
        description="GPUs and other host devices.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    cloud_init: CloudInit | None = Field(default=None, description="cloud-init user data.")
    labels: LabelMap = Field(default_factory=dict, description="Labels copied onto every VM.")
    annotations: AnnotationMap = Field(default_factory=dict, description="Annotations copied onto every VM.")
    eviction_strategy: EvictionStrategy = Field(
        default="LiveMigrate", description="What KubeVirt does with the VM when its node is drained."
    )
    run_strategy: RunStrategy = Field(
        default="Always", description="Default KubeVirt runStrategy of VMs from this template."
    )


class RevisionEntry(Model):
    """One stored revision of the template."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{10}$")] = Field(
        description="Content hash of the revision's spec; pools pin it in templateRef.revision."
    )
    revision: int = Field(ge=1, description="Sequence number: higher is newer.")


class VMTemplateStatus(BaseStatus):
    """Observed state of a VMTemplate."""

    current_revision: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{10}$")] | None = Field(
        default=None, description="Revision of the current spec (absent while the spec is invalid)."
    )
    revisions: list[RevisionEntry] = Field(
        default_factory=list,
        max_length=256,
        description="Stored revisions, oldest first; a revision stays while a pool uses it.",
    )

    vcpus: int | None = Field(
        default=None,
        ge=1,
        description="vCPUs of each VM (sockets x cores x threads), once the spec is valid.",
    )


class VMTemplate(Model):
    """A VMTemplate object as stored in the API."""

    spec: VMTemplateSpec = Field(description="Desired VM definition.")
    status: VMTemplateStatus = Field(default_factory=VMTemplateStatus, description="Observed state.")
