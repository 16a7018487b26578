// Command kstatus prints, for every Kubernetes object it reads, what
// sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute says about it: one JSON
// object per line, in input order.
//
// Usage:
//
//	kstatus [FILE...]   # no FILE, or "-": standard input
//
// Input is JSON (one or more values) or YAML (one or more documents). A List
// (kind ending in "List" with items, as `kubectl get -o json` prints for
// several objects) is expanded into its items. Each output line has
// apiVersion, kind, namespace, name, status (Current, InProgress, Failed,
// Terminating, ...), message and the kstatus conditions Compute derived.
//
// Exit status: 0 when every object was computed, 1 when some input could not
// be read or an object's status could not be computed (that object's line then
// carries "error"), 2 for usage errors.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

type line struct {
	APIVersion string      `json:"apiVersion,omitempty"`
	Kind       string      `json:"kind,omitempty"`
	Namespace  string      `json:"namespace,omitempty"`
	Name       string      `json:"name,omitempty"`
	Status     string      `json:"status,omitempty"`
	Message    string      `json:"message,omitempty"`
	Conditions []condition `json:"conditions"`
	Error      string      `json:"error,omitempty"`
}

type listShape struct {
	Kind  string            `json:"kind"`
	Items []json.RawMessage `json:"items"`
}

func main() {
	args := os.Args[1:]
	for _, a := range args {
		if a == "-h" || a == "--help" {
			fmt.Fprintln(os.Stderr, "usage: kstatus [FILE...]  (no FILE or '-': standard input; JSON or YAML, Lists expanded)")
			os.Exit(2)
		}
	}
	if len(args) == 0 {
		args = []string{"-"}
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	encoder := json.NewEncoder(out)
	encoder.SetEscapeHTML(false)
	failed := false
	for _, name := range args {
		if err := computeFile(name, encoder); err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "kstatus: %s: %v\n", name, err)
		}
	}
	if failed {
		out.Flush()
		os.Exit(1)
	}
}

func computeFile(name string, encoder *json.Encoder) error {
	var input io.Reader = os.Stdin
	if name != "-" {
		file, err := os.Open(name)
		if err != nil {
			return err
		}
		defer file.Close()
		input = file
	}
	decoder := utilyaml.NewYAMLOrJSONDecoder(input, 4096)
	var problems []error
	for {
		var raw json.RawMessage
		err := decoder.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if err := computeDocument(raw, encoder); err != nil {
			problems = append(problems, err)
		}
	}
	return errors.Join(problems...)
}

func computeDocument(raw json.RawMessage, encoder *json.Encoder) error {
	trimmed := strings.TrimSpace(string(raw))
	if trimmed == "" || trimmed == "null" {
		return nil // an empty YAML document
	}
	var shape listShape
	if err := json.Unmarshal(raw, &shape); err != nil {
		return err
	}
	if strings.HasSuffix(shape.Kind, "List") && shape.Items != nil {
		var problems []error
		for _, item := range shape.Items {
			if err := computeDocument(item, encoder); err != nil {
				problems = append(problems, err)
			}
		}
		return errors.Join(problems...)
	}
	// Unstructured's own decoder keeps integers as int64, which Compute expects
	// (metadata.generation, status.observedGeneration).
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(raw); err != nil {
		return err
	}
	result := line{
		APIVersion: obj.GetAPIVersion(),
		Kind:       obj.GetKind(),
		Namespace:  obj.GetNamespace(),
		Name:       obj.GetName(),
		Conditions: []condition{},
	}
	computed, err := status.Compute(obj)
	if err != nil {
		result.Status = string(status.UnknownStatus)
		result.Error = err.Error()
		if writeErr := encoder.Encode(result); writeErr != nil {
			return writeErr
		}
		return fmt.Errorf("%s/%s: %w", obj.GetKind(), obj.GetName(), err)
	}
	result.Status = computed.Status.String()
	result.Message = computed.Message
	for _, c := range computed.Conditions {
		result.Conditions = append(result.Conditions, condition{
			Type: c.Type.String(), Status: string(c.Status), Reason: c.Reason, Message: c.Message,
		})
	}
	return encoder.Encode(result)
}
