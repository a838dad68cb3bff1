package cri

import (
	"sort"

	"github.com/pullwatch/pullwatch/agent/pkg/imageref"
)

// Labels the kubelet puts on every container it creates.
const (
	labelPodName       = "io.kubernetes.pod.name"
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
)

// Inventory is what the runtime reported in one pass.
type Inventory struct {
	Runtime    Runtime
	Images     []Image
	Containers []Container
	Sandboxes  map[string]Sandbox
}

// Image is one image in the runtime's store.
type Image struct {
	ID          string
	RepoTags    []string
	RepoDigests []string
	Pinned      bool
}

// Container is one container in any state.
type Container struct {
	ID                 string
	Name               string
	PodSandboxID       string
	Image              string // ImageSpec.image: on containerd often the image id, not a name
	UserSpecifiedImage string // what the pod spec says, set by recent kubelets
	ImageRef           string
	ImageID            string
	State              string
	Labels             map[string]string
}

// Sandbox is a pod sandbox's identity.
type Sandbox struct {
	ID, Name, Namespace, UID string
}

// Use says which container uses an image. (report.Pod is how the agent's
// report shows it.)
type Use struct {
	Namespace   string
	Pod         string
	PodUID      string
	Container   string
	ContainerID string
	State       string
}

// Entry is one registry reference the node would pull: the image it
// resolves to in the runtime's store and the containers that use it.
type Entry struct {
	Ref         imageref.Ref
	ImageID     string
	RepoDigests []string
	// Digest is the manifest digest the node has for Ref's repository.
	Digest string
	Uses   []Use
	// Problem is set when the reference could not be resolved to a
	// registry reference the agent can probe.
	Problem string
	// Pinned: the runtime pins the image (CRI Image.pinned): its sandbox
	// ("pause") image, which it pulls itself.
	Pinned bool
}

// RuntimePulls reports whether the runtime itself pulls the image, not
// the kubelet for a pod: a pinned image no container uses (the sandbox
// image). The runtime pulls it with its own configuration's credentials
// only, never the kubelet's.
func (e Entry) RuntimePulls() bool { return e.Pinned && len(e.Uses) == 0 }

// InUse reports whether any container references the entry.
func (e Entry) InUse() bool { return len(e.Uses) > 0 }

// Entries joins containers, sandboxes and images on the image id and
// returns one entry per distinct normalized reference, sorted by reference.
//
// containerd puts the image id (config digest), not a name, in a
// container's image fields, so a container's registry reference comes from
// UserSpecifiedImage when the kubelet set it, from its image field when that
// is a name, and else from the tags (or, untagged, the digests) of the image
// it runs. Images no container uses are listed too, with no uses.
func (inv *Inventory) Entries() []Entry {
	byID := make(map[string]*Image, len(inv.Images))
	byName := map[string]*Image{}
	for i := range inv.Images {
		im := &inv.Images[i]
		byID[im.ID] = im
		for _, n := range append(append([]string(nil), im.RepoTags...), im.RepoDigests...) {
			if r, err := imageref.Parse(n); err == nil {
				byName[r.String()] = im
			}
		}
	}
	entries := map[string]*Entry{}
	used := map[string]bool{}
	add := func(ref imageref.Ref, im *Image) *Entry {
		key := ref.String()
		e, ok := entries[key]
		if !ok {
			e = &Entry{Ref: ref}
			entries[key] = e
		}
		if im != nil && e.ImageID == "" {
			e.ImageID = im.ID
			e.Pinned = im.Pinned
			e.RepoDigests = im.RepoDigests
			e.Digest = ref.Digest()
			if e.Digest == "" {
				e.Digest = ref.DigestFor(im.RepoDigests)
			}
		}
		return e
	}

	for _, c := range inv.Containers {
		im := resolveImage(c, byID, byName)
		if im != nil {
			used[im.ID] = true
		}
		use := inv.use(c)
		refs := containerRefs(c, im)
		if len(refs) == 0 {
			// Only an id we cannot map to a name: report it rather than
			// silently dropping a container's image.
			key := "id:" + firstNonEmpty(c.ImageID, c.ImageRef, c.Image)
			e, ok := entries[key]
			if !ok {
				e = &Entry{ImageID: firstNonEmpty(c.ImageID, c.ImageRef, c.Image), Problem: "image is not in the runtime's store and the container names no registry reference"}
				entries[key] = e
			}
			e.Uses = append(e.Uses, use)
			continue
		}
		for _, r := range refs {
			e := add(r, im)
			e.Uses = append(e.Uses, use)
		}
	}
	for i := range inv.Images {
		im := &inv.Images[i]
		if used[im.ID] {
			continue
		}
		for _, r := range imageRefs(im) {
			add(r, im)
		}
	}

	out := make([]Entry, 0, len(entries))
	for _, e := range entries {
		sort.Slice(e.Uses, func(i, j int) bool { return useKey(e.Uses[i]) < useKey(e.Uses[j]) })
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return entryKey(out[i]) < entryKey(out[j]) })
	return out
}

func (inv *Inventory) use(c Container) Use {
	sb := inv.Sandboxes[c.PodSandboxID]
	return Use{
		Namespace:   firstNonEmpty(c.Labels[labelPodNamespace], sb.Namespace),
		Pod:         firstNonEmpty(c.Labels[labelPodName], sb.Name),
		PodUID:      firstNonEmpty(c.Labels[labelPodUID], sb.UID),
		Container:   firstNonEmpty(c.Labels[labelContainerName], c.Name),
		ContainerID: c.ID,
		State:       c.State,
	}
}

// resolveImage finds the store image a container runs, trying its image
// id fields first and its image name last.
func resolveImage(c Container, byID, byName map[string]*Image) *Image {
	for _, cand := range []string{c.ImageID, c.ImageRef, c.Image} {
		if cand == "" {
			continue
		}
		if im, ok := byID[cand]; ok {
			return im
		}
		if im, ok := byID["sha256:"+cand]; ok {
			return im
		}
		if r, err := imageref.Parse(cand); err == nil {
			if im, ok := byName[r.String()]; ok {
				return im
			}
		}
	}
	return nil
}

// containerRefs is what the kubelet would pull for this container again.
func containerRefs(c Container, im *Image) []imageref.Ref {
	for _, cand := range []string{c.UserSpecifiedImage, c.Image} {
		if r, err := imageref.Parse(cand); err == nil {
			return []imageref.Ref{r}
		}
	}
	if im == nil {
		return nil
	}
	return imageRefs(im)
}

// imageRefs are an image's tags, or its digests when it has no tag.
func imageRefs(im *Image) []imageref.Ref {
	var refs []imageref.Ref
	for _, list := range [][]string{im.RepoTags, im.RepoDigests} {
		for _, n := range list {
			if r, err := imageref.Parse(n); err == nil {
				refs = append(refs, r)
			}
		}
		if len(refs) > 0 {
			return refs
		}
	}
	return nil
}

func entryKey(e Entry) string {
	if e.Problem != "" {
		return "~" + e.ImageID
	}
	return e.Ref.String()
}

func useKey(u Use) string { return u.Namespace + "/" + u.Pod + "/" + u.Container + "/" + u.ContainerID }

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
