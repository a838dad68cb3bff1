// Package dockerauth is the kubelet's docker keyring: parsing docker
// configs (config.json / .dockerconfigjson "auths", and the legacy
// .dockercfg) and matching their keys to an image as the kubelet does.
// Both binaries use it: the agent for the node keyring and credential
// provider plugins, the aggregator for the pull secrets it lends to agents.
//
// Nothing here ever quotes its input in an error: docker configs hold
// secrets. A Credential formats without its password.
package dockerauth
