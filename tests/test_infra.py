"""The cluster files under infra/ and the GPU benchmark script, read and checked without a cluster.

No Docker engine, Kubernetes or GPU is needed: each file is parsed as its tool would parse it,
checked against what the tool requires (Ray's own schema for the cluster launcher) and against
this project (the command line, the sweep files, the package's version and dependencies).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from importlib import metadata, util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from orchestrator.cli.main import _parser
from orchestrator.sweep import load_sweep, sweep_from_mapping

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
GPU_SWEEP = REPO / "search_spaces" / "multibase_addition_gpu.yaml"
REFERENCE_SWEEP = REPO / "search_spaces" / "multibase_addition_reference.yaml"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


# Reading the files as their tools do.


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile as (INSTRUCTION, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # A comment inside a continued instruction.
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def arguments_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def pip_install(instructions: list[tuple[str, str]]) -> str:
    """The one RUN instruction that installs Python packages."""
    (install,) = [run for run in arguments_of(instructions, "RUN") if "pip install" in run]
    return install


def build_arg(instructions: list[tuple[str, str]], name: str) -> str:
    for arguments in arguments_of(instructions, "ARG"):
        key, _, value = arguments.partition("=")
        if key == name:
            return value
    raise AssertionError(f"no ARG {name}")


_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, environment: dict[str, str] | None = None) -> Any:
    """Docker Compose's ${NAME:-default} interpolation ($$ is a literal $), recursively."""
    environment = environment or {}
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1)) or match.group(2) or ""

    return _COMPOSE_VARIABLE.sub(substitute, value)


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def pods(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a RayCluster spec: the head's, then each worker group's."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def parse_cli(command: str) -> Any:
    words = shlex.split(command)
    assert words[0] == "orchestrator", f"{command!r} does not start with our command"
    return _parser().parse_args(words[1:])


def package_requirement(name: str) -> Requirement:
    for text in metadata.requires("orchestrator") or []:
        requirement = Requirement(text)
        if requirement.name == name and not requirement.marker:
            return requirement
    raise AssertionError(f"the package does not depend on {name}")


IMAGE_DOCKERFILE = dockerfile(INFRA / "Dockerfile")
MLFLOW_DOCKERFILE = dockerfile(INFRA / "mlflow" / "Dockerfile")
LAUNCHER = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
RAYCLUSTER = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
RAYJOB = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
STORAGE = list(yaml.safe_load_all((INFRA / "kuberay" / "storage.yaml").read_text()))
COMPOSE_TEXT = (INFRA / "mlflow" / "compose.yaml").read_text()
COMPOSE = interpolate(yaml.safe_load(COMPOSE_TEXT))
WORKDIR = arguments_of(IMAGE_DOCKERFILE, "WORKDIR")[-1]
VERSION = metadata.version("orchestrator")


def in_repo(image_path: str) -> Path:
    """The repository file that the image holds at ``image_path`` (under its WORKDIR)."""
    return REPO / Path(image_path).relative_to(WORKDIR)


# The worker image.


def test_image_is_python_311_or_cuda_based() -> None:
    (base,) = arguments_of(IMAGE_DOCKERFILE, "FROM")
    assert base.startswith(("python:3.11", "nvidia/cuda:")), base


def test_image_installs_this_package_and_its_sweep_files_with_pip() -> None:
    copied = {arguments.split()[0] for arguments in arguments_of(IMAGE_DOCKERFILE, "COPY")}
    assert {"pyproject.toml", "orchestrator", "search_spaces"} <= copied
    assert WORKDIR in shlex.split(pip_install(IMAGE_DOCKERFILE))


def test_image_ray_and_tensorflow_are_the_ones_the_package_allows() -> None:
    ray_version = build_arg(IMAGE_DOCKERFILE, "RAY_VERSION")
    assert package_requirement("ray").specifier.contains(ray_version)
    install = pip_install(IMAGE_DOCKERFILE)
    # ray[default] serves `ray job submit`; tensorflow[and-cuda] lets TensorFlow see the GPU.
    assert '"ray[default]==${RAY_VERSION}"' in install
    assert '"tensorflow[and-cuda]"' in install


def test_image_default_command_is_our_cli_and_it_has_no_entrypoint() -> None:
    # The cluster launcher and KubeRay run their own commands in the image.
    assert not arguments_of(IMAGE_DOCKERFILE, "ENTRYPOINT")
    command = json.loads(arguments_of(IMAGE_DOCKERFILE, "CMD")[-1])
    (script,) = metadata.entry_points(group="console_scripts", name=command[0])
    assert script.value == "orchestrator.cli.main:main"
    with pytest.raises(SystemExit) as exit_status:  # --help prints and exits 0.
        _parser().parse_args(command[1:])
    assert exit_status.value.code == 0


def test_image_is_labelled_with_the_package_version_and_sets_no_secret() -> None:
    labels = " ".join(arguments_of(IMAGE_DOCKERFILE, "LABEL"))
    assert f'org.opencontainers.image.version="{VERSION}"' in labels
    for dockerfile_instructions in (IMAGE_DOCKERFILE, MLFLOW_DOCKERFILE):
        for name in ("ENV", "ARG"):
            for arguments in arguments_of(dockerfile_instructions, name):
                assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", arguments), arguments


def test_every_cluster_file_runs_the_same_image_tagged_with_the_package_version() -> None:
    images = {LAUNCHER["docker"]["image"]}
    for spec in (RAYCLUSTER["spec"], RAYJOB["spec"]["rayClusterSpec"]):
        images |= {container["image"] for pod in pods(spec) for container in pod["containers"]}
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name.rpartition("/")[2] == "orchestrator"
    assert tag == VERSION


# The cluster launcher (ray up).


def test_cluster_launcher_config_satisfies_rays_own_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    schema_file = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(LAUNCHER, json.loads(schema_file.read_text()))


def test_cluster_launcher_has_a_cpu_head_and_gpu_workers_present_from_the_start() -> None:
    types = LAUNCHER["available_node_types"]
    head = types[LAUNCHER["head_node_type"]]
    assert head["resources"].get("CPU", 1) == 0 and not head["resources"].get("GPU")
    gpu_types = [node for node in types.values() if node["resources"].get("GPU", 0) >= 1]
    assert gpu_types
    # A sweep sizes itself on the nodes present when it starts: GPU workers must exist then.
    assert all(node["min_workers"] >= 1 for node in gpu_types)
    assert LAUNCHER["max_workers"] >= sum(node["max_workers"] for node in gpu_types)
    for node in gpu_types:
        assert "--gpus all" in node["docker"]["worker_run_options"]


def test_cluster_launcher_installs_the_checkout_it_was_started_from() -> None:
    assert LAUNCHER["file_mounts"] == {WORKDIR: "."}
    assert any(
        "pip install" in command and WORKDIR in shlex.split(command)
        for command in LAUNCHER["setup_commands"]
    )


def test_cluster_launcher_starts_the_head_on_the_port_the_workers_join() -> None:
    head = " ".join(LAUNCHER["head_start_ray_commands"])
    workers = " ".join(LAUNCHER["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers


def test_cluster_launcher_mounts_the_gpu_sweeps_storage_on_every_node() -> None:
    storage = load_sweep(GPU_SWEEP).spec.storage
    assert f"-v {storage}:{storage}" in LAUNCHER["docker"]["run_options"]
    assert any(
        "mount -t nfs4" in command and storage in command
        for command in LAUNCHER["initialization_commands"]
    )


# KubeRay.


def test_kuberay_manifests_are_ray_io_v1_resources() -> None:
    assert (RAYCLUSTER["apiVersion"], RAYCLUSTER["kind"]) == ("ray.io/v1", "RayCluster")
    assert (RAYJOB["apiVersion"], RAYJOB["kind"]) == ("ray.io/v1", "RayJob")
    (claim,) = STORAGE
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kuberay_ray_version_is_the_images_ray() -> None:
    ray_version = build_arg(IMAGE_DOCKERFILE, "RAY_VERSION")
    assert RAYCLUSTER["spec"]["rayVersion"] == ray_version
    assert RAYJOB["spec"]["rayClusterSpec"]["rayVersion"] == ray_version


def test_rayjob_starts_the_same_cluster_as_the_raycluster_and_removes_it() -> None:
    assert RAYJOB["spec"]["rayClusterSpec"] == RAYCLUSTER["spec"]
    assert RAYJOB["spec"]["shutdownAfterJobFinishes"] is True


def test_kuberay_head_takes_no_trials_and_gpu_workers_ask_for_the_gpus_ray_offers() -> None:
    spec = RAYCLUSTER["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        params = group["rayStartParams"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == int(params["num-gpus"]) >= 1
        assert int(limits["cpu"]) == int(params["num-cpus"])
        assert group["minReplicas"] >= 1  # Present when the sweep sizes itself.


def test_every_kuberay_pod_mounts_the_shared_storage_where_the_sweep_keeps_trials() -> None:
    storage = load_sweep(GPU_SWEEP).spec.storage
    (claim,) = STORAGE
    for pod in pods(RAYCLUSTER["spec"]):
        volumes = {
            volume["name"]
            for volume in pod["volumes"]
            if volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        }
        mounts = [
            mount["mountPath"]
            for container in pod["containers"]
            for mount in container["volumeMounts"]
            if mount["name"] in volumes
        ]
        assert mounts == [storage]


def test_rayjob_entrypoint_is_our_run_command_on_a_sweep_file_in_the_image() -> None:
    args = parse_cli(RAYJOB["spec"]["entrypoint"])
    assert args.command == "run"
    sweep = load_sweep(in_repo(args.sweep))
    assert sweep.spec.tracking.uri is None  # The command line names the server.
    (head,) = RAYJOB["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    environment = {variable["name"]: variable["value"] for variable in head["env"]}
    assert args.tracking_uri == environment["MLFLOW_TRACKING_URI"]


def test_rayjob_sweep_packs_each_gpu_with_the_cpus_a_worker_has() -> None:
    resources = load_sweep(in_repo(parse_cli(RAYJOB["spec"]["entrypoint"]).sweep)).spec.resources
    (group,) = RAYJOB["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus, cpus = (float(group["rayStartParams"][key]) for key in ("num-gpus", "num-cpus"))
    assert 0 < resources.gpus_per_trial <= gpus
    trials_per_worker = gpus / resources.gpus_per_trial
    assert trials_per_worker * resources.cpus_per_trial <= cpus


# The MLflow server (docker compose).


def test_compose_runs_postgres_minio_a_bucket_job_and_mlflow_in_order() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow"} <= set(services)
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    assert services["create-bucket"]["depends_on"] == ["minio"]
    assert "healthcheck" in services["postgres"]


def test_mlflow_server_keeps_runs_in_the_compose_postgres() -> None:
    services = COMPOSE["services"]
    uri = urlsplit(option(services["mlflow"]["command"], "--backend-store-uri"))
    database = services["postgres"]["environment"]
    assert uri.scheme.partition("+")[0] == "postgresql"
    assert (uri.hostname, uri.port) == ("postgres", 5432)
    assert uri.username == database["POSTGRES_USER"]
    assert uri.password == database["POSTGRES_PASSWORD"]
    assert uri.path == "/" + database["POSTGRES_DB"]
    driver = uri.scheme.partition("+")[2]
    if driver:  # The server image must hold the driver the URI names.
        install = pip_install(MLFLOW_DOCKERFILE)
        assert re.search(rf'"?{driver}(\[binary\])?"?(\s|$)', install), install


def test_mlflow_server_serves_artifacts_from_the_bucket_the_init_job_creates() -> None:
    services = COMPOSE["services"]
    command = services["mlflow"]["command"]
    assert "--serve-artifacts" in command
    bucket = services["create-bucket"]["environment"]["MLFLOW_BUCKET"]
    assert option(command, "--artifacts-destination") == f"s3://{bucket}/"
    minio = services["minio"]["environment"]
    for name in ("mlflow", "create-bucket"):
        environment = services[name]["environment"]
        assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert environment["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert environment["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_mlflow_server_listens_on_the_published_port_and_is_the_only_one_published() -> None:
    services = COMPOSE["services"]
    command = services["mlflow"]["command"]
    assert option(command, "--host") == "0.0.0.0"
    (published,) = services["mlflow"]["ports"]
    assert published.rpartition(":")[2] == option(command, "--port")
    assert [name for name, service in services.items() if "ports" in service] == ["mlflow"]


def test_mlflow_server_accepts_the_host_names_our_tracking_uris_use() -> None:
    allowed = option(COMPOSE["services"]["mlflow"]["command"], "--allowed-hosts").split(",")
    kubernetes = urlsplit(parse_cli(RAYJOB["spec"]["entrypoint"]).tracking_uri).netloc
    for host in (kubernetes, "localhost:5000", "127.0.0.1:5000", "10.0.3.7:5000"):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), host


def test_mlflow_server_image_pins_the_mlflow_the_package_uses() -> None:
    version = build_arg(MLFLOW_DOCKERFILE, "MLFLOW_VERSION")
    assert package_requirement("mlflow").specifier.contains(version)
    install = pip_install(MLFLOW_DOCKERFILE)
    assert '"mlflow==${MLFLOW_VERSION}"' in install and "boto3" in install


def test_compose_credentials_are_placeholders_read_from_the_environment() -> None:
    raw = yaml.safe_load(COMPOSE_TEXT)["services"]
    for service, variable in (
        ("postgres", "POSTGRES_PASSWORD"),
        ("minio", "MINIO_ROOT_PASSWORD"),
    ):
        assert raw[service]["environment"][variable].startswith(f"${{{variable}:-change-me")
    example = (INFRA / "mlflow" / ".env.example").read_text()
    named = set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    read = {name for name, _ in _COMPOSE_VARIABLE.findall(COMPOSE_TEXT) if name}
    assert read <= named, f"not in .env.example: {sorted(read - named)}"
    for line in example.splitlines():
        if re.match(r"^\w*PASSWORD=", line):
            assert "change-me" in line


# The GPU sweep file and the benchmark script.


def test_gpu_sweep_is_the_reference_grid_four_trials_to_a_gpu() -> None:
    gpu, reference = load_sweep(GPU_SWEEP).spec, load_sweep(REFERENCE_SWEEP).spec
    assert (gpu.model, gpu.data, gpu.params) == (reference.model, reference.data, reference.params)
    assert gpu.resources.gpus_per_trial == 0.25
    assert gpu.storage is not None and Path(gpu.storage).is_absolute()


def test_gpu_check_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)


def test_gpu_check_refuses_in_one_line_where_nvidia_smi_is_missing(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    folders = os.environ.get("PATH", "").split(os.pathsep)
    path = os.pathsep.join(f for f in folders if f and not (Path(f) / "nvidia-smi").exists())
    results = tmp_path / "RESULTS.md"
    environment = {**os.environ, "PATH": path, "GPU_CHECK_RESULTS": str(results)}
    done = subprocess.run(
        [bash, str(GPU_CHECK)], env=environment, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("gpu_check: ") and "nvidia-smi" in line
    assert not results.exists()


def test_gpu_check_sweeps_pack_1_2_4_and_8_copies_of_one_reference_trial_to_a_gpu() -> None:
    done = subprocess.run(
        ["bash", str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    sweeps = [sweep_from_mapping(document) for document in yaml.safe_load_all(done.stdout)]
    reference = load_sweep(REFERENCE_SWEEP).spec
    assert [sweep.spec.resources.gpus_per_trial for sweep in sweeps] == [1, 0.5, 0.25, 0.125]
    for per_gpu, sweep in zip([1, 2, 4, 8], sweeps, strict=True):
        spec = sweep.spec
        assert spec.resources.max_concurrent_trials == per_gpu
        combinations = sweep.combinations()
        assert len(combinations) == 2 * per_gpu  # Every slot filled twice.
        trained = [{k: v for k, v in c.items() if k != "replica"} for c in combinations]
        assert all(combination == trained[0] for combination in trained)
        assert (spec.model, spec.data.function) == (reference.model, reference.data.function)
        # A model of the reference grid; only its training is shortened (epochs, rows).
        for name, value in trained[0].items():
            if name != "epochs":
                assert value in reference.params[name], f"{name}={value}: not a reference value"
