"""How the services are deployed: the topology every deployment form (compose, Kubernetes, local processes)
is checked against, and the local-process mode (`agentforge up-local`)."""
