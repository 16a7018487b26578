// Command netagent is the kind cluster's pod network on this machine, in place of kind's kindnetd,
// whose module the Go module proxy does not serve. It does what kindnetd does for an IPv4 cluster
// whose nodes share one container network:
//   - writes the node's CNI configuration (ptp + host-local over the node's podCIDRs + portmap), so
//     the kubelet turns Ready once its own range is known;
//   - keeps a route to every other node's podCIDRs via that node's InternalIP;
//   - masquerades pod traffic that leaves the cluster's pod subnet (POD_SUBNET), so pods reach the
//     node network and the API server's host address.
//
// It is level-triggered: every change to a Node, and a resync every 30 s, recomputes all of it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

const (
	cniConfigPath = "/etc/cni/net.d/10-kindnet.conflist"
	masqChain     = "VIRTFLEET-MASQ"
)

func main() {
	nodeName := os.Getenv("NODE_NAME")
	podSubnet := os.Getenv("POD_SUBNET")
	if nodeName == "" || podSubnet == "" {
		klog.Fatal("NODE_NAME and POD_SUBNET must be set (downward API and the manifest)")
	}
	if _, _, err := net.ParseCIDR(podSubnet); err != nil {
		klog.Fatalf("POD_SUBNET %q: %v", podSubnet, err)
	}
	config, err := rest.InClusterConfig()
	if err != nil {
		klog.Fatalf("in-cluster config: %v", err)
	}
	// Before kube-proxy programs the Service address, reach the API server directly.
	if endpoint := os.Getenv("CONTROL_PLANE_ENDPOINT"); endpoint != "" {
		config.Host = "https://" + endpoint
	}
	client := kubernetes.NewForConfigOrDie(config)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 30*time.Second)
	nodes := factory.Core().V1().Nodes()
	wake := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	_, _ = nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, obj any) { poke(obj) },
		DeleteFunc: poke,
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	klog.Infof("netagent on node %s, pod subnet %s", nodeName, podSubnet)

	ticker := time.NewTicker(30 * time.Second)
	defer ticker.Stop()
	for {
		list, err := nodes.Lister().List(labels.Everything())
		if err == nil {
			if err := reconcile(nodeName, podSubnet, list); err != nil {
				klog.Errorf("reconcile: %v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-ticker.C:
		}
	}
}

func reconcile(self, podSubnet string, nodes []*corev1.Node) error {
	var errs []string
	for _, node := range nodes {
		cidrs := podCIDRs(node)
		if node.Name == self {
			if len(cidrs) > 0 {
				if err := writeCNIConfig(cidrs); err != nil {
					errs = append(errs, err.Error())
				}
			}
			continue
		}
		ip := internalIP(node)
		if ip == nil {
			continue
		}
		for _, cidr := range cidrs {
			if err := ensureRoute(cidr, ip); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if err := ensureMasquerade(podSubnet); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func podCIDRs(node *corev1.Node) []string {
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	var v4 []string
	for _, c := range cidrs {
		if ip, _, err := net.ParseCIDR(c); err == nil && ip.To4() != nil {
			v4 = append(v4, c)
		}
	}
	return v4
}

func internalIP(node *corev1.Node) net.IP {
	for _, addr := range node.Status.Addresses {
		if addr.Type == corev1.NodeInternalIP {
			if ip := net.ParseIP(addr.Address); ip != nil && ip.To4() != nil {
				return ip
			}
		}
	}
	return nil
}

func ensureRoute(cidr string, via net.IP) error {
	_, dst, err := net.ParseCIDR(cidr)
	if err != nil {
		return err
	}
	route := &netlink.Route{Dst: dst, Gw: via}
	existing, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
	if err != nil {
		return fmt.Errorf("list routes to %s: %w", cidr, err)
	}
	for _, r := range existing {
		if r.Gw.Equal(via) {
			return nil
		}
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("route %s via %s: %w", cidr, via, err)
	}
	klog.Infof("route %s via %s", cidr, via)
	return nil
}

func writeCNIConfig(cidrs []string) error {
	ranges := make([][]map[string]string, 0, len(cidrs))
	sorted := append([]string(nil), cidrs...)
	sort.Strings(sorted)
	for _, c := range sorted {
		ranges = append(ranges, []map[string]string{{"subnet": c}})
	}
	config := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "kindnet",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": ranges,
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
				"mtu": 1500,
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	want, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return err
	}
	if have, err := os.ReadFile(cniConfigPath); err == nil && string(have) == string(want) {
		return nil
	}
	tmp := filepath.Join(filepath.Dir(cniConfigPath), ".10-kindnet.conflist.tmp")
	if err := os.MkdirAll(filepath.Dir(cniConfigPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, want, 0o644); err != nil {
		return err
	}
	klog.Infof("CNI configuration for %v", sorted)
	return os.Rename(tmp, cniConfigPath)
}

// ensureMasquerade keeps one nat chain: traffic from pods to anywhere outside the pod subnet leaves
// with the node's address, so answers find their way back through the node.
func ensureMasquerade(podSubnet string) error {
	_ = iptables("-t", "nat", "-N", masqChain) // fails once the chain exists
	want := [][]string{
		{"-d", podSubnet, "-j", "RETURN"},
		{"-j", "MASQUERADE"},
	}
	for _, rule := range want {
		args := append([]string{"-t", "nat", "-C", masqChain}, rule...)
		if iptables(args...) == nil {
			continue
		}
		if err := iptables(append([]string{"-t", "nat", "-A", masqChain}, rule...)...); err != nil {
			return err
		}
	}
	jump := []string{"-s", podSubnet, "-j", masqChain}
	if iptables(append([]string{"-t", "nat", "-C", "POSTROUTING"}, jump...)...) != nil {
		return iptables(append([]string{"-t", "nat", "-A", "POSTROUTING"}, jump...)...)
	}
	return nil
}

func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
