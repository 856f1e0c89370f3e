"""The deployed shape of Agent Forge, in one place: which services exist, how they are started, which need a
GPU, and which network connections the code makes. compose.yaml, k8s/ and `agentforge up-local` are each
checked against this module by tests (tests/deploy), and this module is checked against the code (phase
definitions, the profiles' scheduling tables, the address variables the coordinator and workers read).

Names: a service's deploy name uses dashes (`reasoning-data`), which is also what `agentforge serve` accepts;
its phase name uses underscores (`reasoning_data`).
"""

from __future__ import annotations

from dataclasses import dataclass

GRPC_PORT = 50051                  # every Agent Forge server listens here inside its container / pod
S3_PORT = 9000                     # MinIO's S3 API
DNS_PORT = 53
IMAGE_REPO = "agentforge"          # images are f"{IMAGE_REPO}/{deploy name}:{IMAGE_TAG}"
IMAGE_TAG = "0.1.0"
BUCKET = "agentforge"
STORE_URI = f"s3://{BUCKET}"
CACHE_DIR = "/cache"               # the one writable mount in a container: torch extensions, HF, W&B, tmp
STATE_DIR = "/var/lib/agentforge"  # the coordinator's SQLite state (a volume / PVC)
KERNEL_DIR = "/opt/agentforge/kernels"   # the prebuilt BitNet C++ kernel inside the images


@dataclass(frozen=True)
class Service:
    name: str                 # deploy name: compose service, k8s Deployment/Service, image name
    phase: str | None         # the phase it serves (None for the coordinator)
    gpu: bool                 # requests a GPU (compose reservation, nvidia.com/gpu in k8s)
    scalable: bool = False    # runs as N identical replicas (no container_name, no fixed host port)

    @property
    def image(self) -> str:
        return f"{IMAGE_REPO}/{self.name}:{IMAGE_TAG}"

    @property
    def cpu_image(self) -> str:
        """The image on a host without a GPU: GPU services get a CPU build under their own tag."""
        return f"{self.image}-cpu" if self.gpu else self.image

    @property
    def dockerfile(self) -> str:
        """Its Dockerfile, relative to the repository root (the build context): services/<folder>/Dockerfile."""
        return f"services/{self.name.replace('-', '_')}/Dockerfile"

    @property
    def command(self) -> list[str]:
        """The container command: exactly what the local-process mode runs."""
        return ["agentforge", "serve", self.name]

    @property
    def address_env(self) -> str | None:
        """The variable the coordinator reads for this service's address: AGENTFORGE_<service folder>_ADDR
        (services/coordinator/app.py address_env), so AGENTFORGE_DATASET_ADDR for the `datasets` phase."""
        return None if self.phase is None else f"AGENTFORGE_{self.name.replace('-', '_').upper()}_ADDR"


SERVICES: tuple[Service, ...] = (
    Service("coordinator", None, gpu=False),
    Service("dataset", "datasets", gpu=False),
    Service("cognate", "cognate", gpu=True),
    Service("evomerge", "evomerge", gpu=True),
    Service("reasoning-data", "reasoning_data", gpu=False, scalable=True),
    Service("quietstar", "quietstar", gpu=True),
    Service("bitnet", "bitnet", gpu=True),
)
MINIO = "minio"
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"        # the store (compose and k8s)
MINIO_CLIENT_IMAGE = "minio/mc:RELEASE.2025-04-16T18-13-26Z"      # the one-shot bucket init (minio-init)

# Who opens connections to whom (TCP), from reading the code:
#   coordinator -> every phase service: the job protocol (services/coordinator/remote.py GrpcExecutor)
#   reasoning-data -> coordinator: work-unit leases, heartbeats, budgets (shared/rpc/unit_client.py, used by
#       services/reasoning_data/core/job.py when AGENTFORGE_COORDINATOR_ADDR is set)
#   every Agent Forge service -> MinIO: the artifact store (shared/storage/s3.py)
#   every pod -> DNS (kube-dns / the compose resolver)
# Users reach the coordinator (agentforge runs ... over gRPC); nothing else is reached from outside.
CONNECTIONS: tuple[tuple[str, str, int], ...] = (
    *(("coordinator", s.name, GRPC_PORT) for s in SERVICES if s.phase is not None),
    ("reasoning-data", "coordinator", GRPC_PORT),
    *((s.name, MINIO, S3_PORT) for s in SERVICES),
)
COORDINATOR_CLIENTS = tuple(src for src, dst, _ in CONNECTIONS if dst == "coordinator")


def service(name: str) -> Service:
    for s in SERVICES:
        if s.name == name:
            return s
    raise KeyError(f"unknown service {name!r}; known: {[s.name for s in SERVICES]}")


def common_env() -> dict[str, str]:
    """Environment every Agent Forge container gets (secrets excluded: they come from .env / a Secret)."""
    return {
        "AGENTFORGE_HOST": "0.0.0.0",
        "AGENTFORGE_PORT": str(GRPC_PORT),
        "AGENTFORGE_STORE": STORE_URI,
        "AGENTFORGE_S3_ENDPOINT": f"{MINIO}:{S3_PORT}",
        "AGENTFORGE_REQUIRE_AUTH": "1",
        "TORCH_EXTENSIONS_DIR": f"{CACHE_DIR}/torch_extensions",
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "WANDB_DIR": f"{CACHE_DIR}/wandb",
        "WANDB_MODE": "offline",
        "TMPDIR": f"{CACHE_DIR}/tmp",
        "AGENTFORGE_KERNEL_DIR": KERNEL_DIR,
    }


SECRET_ENV = ("AGENTFORGE_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Secrets only some configurations use, taken from the host's environment (empty when unset): the teacher API
# key of reasoning-data's `openai` backend (the shipped profiles' reasoning_data.api_key_env).
OPTIONAL_SECRET_ENV: dict[str, tuple[str, ...]] = {"reasoning-data": ("OPENAI_API_KEY",)}

COORDINATOR_ADDR_ENV = "AGENTFORGE_COORDINATOR_ADDR"   # read by coordinator clients (shared/rpc/unit_client.py)


def default_address(name: str) -> str:
    """How compose and k8s reach a service: its name through DNS, on the gRPC port."""
    return f"{name}:{GRPC_PORT}"


def service_env(svc: Service, address=default_address) -> dict[str, str]:
    """What `svc` gets on top of common_env(): the address of each service it calls (CONNECTIONS) and, for
    the coordinator, its state file and lease settings (values a deployment may change; the names are fixed).
    `address(name)` is how the deployment reaches a service: DNS names here, 127.0.0.1 ports in up-local."""
    env: dict[str, str] = {}
    if svc.name == "coordinator":
        env.update({"AGENTFORGE_STATE": f"{STATE_DIR}/coordinator.sqlite", "AGENTFORGE_ACCELERATORS": "1",
                    "AGENTFORGE_LEASE_TTL_S": "30", "AGENTFORGE_UNIT_TTL_S": "60"})
    for src, dst, _ in CONNECTIONS:
        if src == svc.name and dst != MINIO:
            env[service(dst).address_env or COORDINATOR_ADDR_ENV] = address(dst)
    return env
