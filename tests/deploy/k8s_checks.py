"""Checks on rendered Kubernetes objects that the schemas cannot make (tests/deploy/test_k8s.py uses them).

- `enum_problems`: enum fields with a value Kubernetes would refuse (kubernetes-validate lets any string
  through for imagePullPolicy, restartPolicy, protocol, ...).
- `allowed` / `policy_problems`: which flows the NetworkPolicies allow, evaluated the way Kubernetes does:
  a connection from pod A to pod B on a port needs an egress rule of a policy selecting A and an ingress rule
  of a policy selecting B; a pod that no policy of a direction selects is open in that direction. Pods are
  the rendered workloads' pod templates plus a pseudo-pod for user clients (agentforge.io/client=true).
"""

from __future__ import annotations

from shared.deploy import topology

WORKLOADS = ("Deployment", "StatefulSet", "Job")
NAMESPACE = "agentforge"
CLIENT = "client"   # a pseudo-pod: any pod labelled agentforge.io/client=true
CLIENT_LABELS = {"agentforge.io/client": "true"}
DNS_PEER = "namespace{kubernetes.io/metadata.name=kube-system} pods{k8s-app=kube-dns}"


# -- rendered objects -----------------------------------------------------------------------------------
def named(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def generated(objs: list[dict], kind: str, prefix: str) -> dict:
    """A generator's output (its name carries a content hash)."""
    [obj] = [o for name, o in named(objs, kind).items() if name.startswith(prefix + "-")]
    return obj


def pods(objs: list[dict]) -> list[tuple[str, str, dict, dict]]:
    """(workload name, kind, pod spec, pod labels) for every workload."""
    return [(o["metadata"]["name"], o["kind"], o["spec"]["template"]["spec"],
             o["spec"]["template"]["metadata"]["labels"]) for o in objs if o["kind"] in WORKLOADS]


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels / matchExpressions, or a Service's plain map) against pod labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


# -- enum values ----------------------------------------------------------------------------------------
# (parent key, key) -> allowed values; parent None matches any parent.
ENUMS = {
    (None, "imagePullPolicy"): {"Always", "IfNotPresent", "Never"},
    (None, "protocol"): {"TCP", "UDP", "SCTP"},
    (None, "policyTypes"): {"Ingress", "Egress"},
    (None, "accessModes"): {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"},
    ("matchExpressions", "operator"): {"In", "NotIn", "Exists", "DoesNotExist"},
    ("tolerations", "operator"): {"Exists", "Equal"},
    ("tolerations", "effect"): {"NoSchedule", "PreferNoSchedule", "NoExecute"},
    ("strategy", "type"): {"Recreate", "RollingUpdate"},
    ("seccompProfile", "type"): {"RuntimeDefault", "Localhost", "Unconfined"},
}
KIND_ENUMS = {  # kind -> {(parent, key): allowed}
    "Service": {("spec", "type"): {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}},
    "Job": {("spec", "restartPolicy"): {"OnFailure", "Never"}},
    "Deployment": {("spec", "restartPolicy"): {"Always"}},
    "StatefulSet": {("spec", "restartPolicy"): {"Always"}},
}


def enum_problems(objs: list[dict]) -> list[str]:
    problems = []

    def walk(kind: str, name: str, node, parent: str | None, key: str | None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("data", "annotations", "labels", "matchLabels"):
                    walk(kind, name, v, key, k)
        elif isinstance(node, list):
            for v in node:
                walk(kind, name, v, parent, key)
        else:
            allowed = KIND_ENUMS.get(kind, {}).get((parent, key)) or ENUMS.get((parent, key)) or ENUMS.get((None, key))
            if allowed is not None and node not in allowed:
                problems.append(f"{kind}/{name}: {key}={node!r} is not one of {sorted(allowed)}")

    for o in objs:
        walk(o["kind"], o["metadata"]["name"], o, None, None)
    return problems


# -- network policies -----------------------------------------------------------------------------------
def peer_name(peer: dict) -> str:
    def fmt(sel):
        return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).get("matchLabels", {}).items())) or "*"
    if "ipBlock" in peer:
        return f"ipBlock {peer['ipBlock']['cidr']}"
    return f"namespace{{{fmt(peer['namespaceSelector'])}}} pods{{{fmt(peer.get('podSelector'))}}}"


def peer_pods(peer: dict, ns_labels: dict, pods_: dict[str, dict]) -> tuple[set[str], str | None]:
    """(our pods the peer selects, a description of what it selects outside the namespace, or None)."""
    if "ipBlock" in peer:
        return set(), peer_name(peer)
    namespaces = peer.get("namespaceSelector")
    if namespaces is not None and not selects(namespaces, ns_labels):
        return set(), peer_name(peer)
    ours = {n for n, labels in pods_.items() if selects(peer.get("podSelector", {}), labels)}
    only_ours = namespaces is None or namespaces == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    return ours, None if only_ours else peer_name(peer)


def rule_ports(rule: dict, candidates: set[tuple[int, str]]) -> set[tuple[int, str]]:
    if not rule.get("ports"):
        return set(candidates)   # no ports: every port
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


def policy_types(spec: dict) -> list[str]:
    """As the API server defaults them: Ingress always, Egress when the policy has egress rules."""
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def allowed(objs: list[dict]) -> tuple[set[tuple], set[tuple]]:
    """(flows between our pods as (source, destination, port, protocol), flows that cross the namespace as
    (pod, direction, peer, port)) that the rendered NetworkPolicies allow."""
    pods_ = {name: labels for name, _, _, labels in pods(objs)} | {CLIENT: CLIENT_LABELS}
    ns_labels = named(objs, "Namespace")[NAMESPACE]["metadata"].get("labels", {}) | {
        "kubernetes.io/metadata.name": NAMESPACE}
    policies = [p["spec"] for p in named(objs, "NetworkPolicy").values()]
    # Ports to try: every container port and every port a rule names.
    candidates = {(cp["containerPort"], cp.get("protocol", "TCP"))
                  for _, _, spec, _ in pods(objs) for c in spec["containers"] for cp in c.get("ports", [])}
    for pol in policies:
        for rule in pol.get("ingress", []) + pol.get("egress", []):
            candidates |= rule_ports(rule, set())
    sides: dict[str, set] = {"Egress": set(), "Ingress": set()}   # (pod, peer pod, port, protocol)
    external: set[tuple] = set()
    for direction, peers_key in (("Egress", "to"), ("Ingress", "from")):
        for pod, labels in pods_.items():
            mine = [p for p in policies if direction in policy_types(p) and selects(p["podSelector"], labels)]
            if not mine:   # not isolated in this direction: everything
                sides[direction] |= {(pod, other, *port) for other in pods_ for port in candidates}
                external.add((pod, direction, "anywhere", "*"))
            for rule in (rule for p in mine for rule in p.get(direction.lower(), [])):
                ports = rule_ports(rule, candidates)
                peers = [(set(pods_), "anywhere")] if peers_key not in rule else [
                    peer_pods(peer, ns_labels, pods_) for peer in rule[peers_key]]
                for targets, outside in peers:
                    sides[direction] |= {(pod, t, *port) for t in targets for port in ports}
                    if outside:
                        external |= {(pod, direction, outside, port) for port in ports}
    internal = {(s, d, port, proto) for s, d, port, proto in sides["Egress"]
                if (d, s, port, proto) in sides["Ingress"]}
    return internal, external


def policy_problems(objs: list[dict]) -> list[str]:
    """Differences from what the code needs: topology.CONNECTIONS, the bucket-init Job to MinIO, user clients
    to the coordinator, and DNS to kube-dns for every pod; nothing else, inside or across the namespace."""
    internal, external = allowed(objs)
    expected = {(s, d, port, "TCP") for s, d, port in topology.CONNECTIONS} | {
        ("minio-init", topology.MINIO, topology.S3_PORT, "TCP"), (CLIENT, "coordinator", topology.GRPC_PORT, "TCP")}
    pods_ = {name for name, *_ in pods(objs)} | {CLIENT}
    dns = {(p, "Egress", DNS_PEER, (topology.DNS_PORT, proto)) for p in pods_ for proto in ("UDP", "TCP")}
    return ([f"allowed but not in topology.CONNECTIONS: {f}" for f in sorted(internal - expected)]
            + [f"in topology.CONNECTIONS but blocked: {f}" for f in sorted(expected - internal)]
            + [f"crosses the namespace, not DNS: {f}" for f in sorted(external - dns, key=str)]
            + [f"DNS blocked: {f}" for f in sorted(dns - external, key=str)])
