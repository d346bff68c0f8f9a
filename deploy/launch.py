"""The shell scripts a multi-node (LeaderWorkerSet) engine starts with, shipped in a ConfigMap.

The leader waits until every worker pod of its group runs, then starts one MPI rank per GPU across the group
with mpirun, reaching the workers through `kubectl exec` (the remote-shell agent of the LWS TensorRT-LLM
example, kubernetes-sigs/lws docs/examples/tensorrt-llm). Each rank runs TensorRT-LLM's
`trtllm-llmapi-launch`: rank 0 runs the command it is given (serve-engine, hence tritonserver and the OpenAI
endpoint) and the other ranks serve its LLM-API session as MPI workers. Workers only wait to be exec'd into.

LeaderWorkerSet names the pods of group G of set NAME: the leader NAME-G, the workers NAME-G-1 ... NAME-G-(n-1).
"""

from __future__ import annotations

from deploy.sizing import deploy_data

LEADER = "leader.sh"
WORKER = "worker.sh"
RSH_AGENT = "kubexec.sh"

_LEADER = """#!/bin/sh
# Leader of one LeaderWorkerSet group: start WORLD_SIZE TensorRT-LLM ranks, GPUS_PER_POD in each of the
# GROUP_SIZE pods, with MPIRUN; rank 0 runs the command given as arguments (serve-engine ...).
set -eu
here="$(dirname "$0")"
hosts="${POD_NAME}:${GPUS_PER_POD}"
i=1
while [ "$i" -lt "$GROUP_SIZE" ]; do
  worker="${POD_NAME}-${i}"
  until [ "$(kubectl get pod "$worker" -o 'jsonpath={.status.phase}' 2>/dev/null)" = "Running" ]; do
    echo "leader: waiting for worker pod $worker"
    sleep "${POLL_SECONDS:-5}"
  done
  hosts="${hosts},${worker}:${GPUS_PER_POD}"
  i=$((i + 1))
done
echo "leader: starting $WORLD_SIZE ranks on $hosts"
exec "$MPIRUN" --mca plm_rsh_agent "$here/kubexec.sh" --host "$hosts" -np "$WORLD_SIZE" --bind-to none \\
  -x HOME -x XDG_CACHE_HOME -x TRITON_CACHE_DIR -x HF_HOME -x PATH -x LD_LIBRARY_PATH \\
  trtllm-llmapi-launch "$@"
"""

_WORKER = """#!/bin/sh
# Worker of one LeaderWorkerSet group: the leader's mpirun starts the TensorRT-LLM ranks here through
# `kubectl exec`; until the pod is stopped there is nothing else to do.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""

_RSH = """#!/bin/sh
# mpirun's remote-shell agent: `kubexec.sh POD COMMAND...` runs COMMAND in the worker container of POD.
pod="$1"
shift
exec kubectl exec "$pod" -c worker -- /bin/sh -c "$*"
"""


def scripts() -> dict[str, str]:
    return {LEADER: _LEADER, WORKER: _WORKER, RSH_AGENT: _RSH}


def serve_args() -> list[str]:
    """What every image and pod that serves starts: serve-engine on the mounted engine, all interfaces inside
    the container (the host or the Service decides what is exposed), the ports of deploy/data/deploy.yaml."""
    d = deploy_data()
    p = d["ports"]
    return ["serve-engine", d["paths"]["engine"], "--host", "0.0.0.0", "--http-port", str(p["http"]),
            "--grpc-port", str(p["grpc"]), "--metrics-port", str(p["metrics"]), "--openai-port", str(p["openai"])]
