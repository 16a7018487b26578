// Command crds writes the CustomResourceDefinitions that virt-operator of the pinned KubeVirt installs,
// for the kinds virtfleet writes or reads, into a folder as <group>_<plural>.yaml. The schemas come from
// KubeVirt's own generator (the code virt-operator runs), so the tests hold rendered objects against the
// KubeVirt version the real cluster runs. Prose descriptions are dropped, as in shared/kubevirt-crds;
// every field, type, enum, required list and x-kubernetes-* marker stays.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
)

func stripDescriptions(schema *extv1.JSONSchemaProps) {
	if schema == nil {
		return
	}
	schema.Description = ""
	for name, property := range schema.Properties {
		stripDescriptions(&property)
		schema.Properties[name] = property
	}
	if schema.Items != nil {
		stripDescriptions(schema.Items.Schema)
		for i := range schema.Items.JSONSchemas {
			stripDescriptions(&schema.Items.JSONSchemas[i])
		}
	}
	if schema.AdditionalProperties != nil {
		stripDescriptions(schema.AdditionalProperties.Schema)
	}
	for _, list := range [][]extv1.JSONSchemaProps{schema.AllOf, schema.AnyOf, schema.OneOf} {
		for i := range list {
			stripDescriptions(&list[i])
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: crds <output folder>")
		os.Exit(2)
	}
	generators := []func() (*extv1.CustomResourceDefinition, error){
		components.NewVirtualMachineCrd,
		components.NewVirtualMachineInstanceCrd,
		components.NewVirtualMachineInstanceMigrationCrd,
		components.NewMigrationPolicyCrd,
		components.NewVirtualMachinePoolCrd,
		components.NewVirtualMachineInstancetypeCrd,
		components.NewVirtualMachineClusterInstancetypeCrd,
		components.NewVirtualMachinePreferenceCrd,
		components.NewVirtualMachineClusterPreferenceCrd,
	}
	for _, generate := range generators {
		crd, err := generate()
		if err != nil {
			fmt.Fprintln(os.Stderr, "generating a KubeVirt CRD:", err)
			os.Exit(1)
		}
		crd.TypeMeta.APIVersion = "apiextensions.k8s.io/v1"
		crd.TypeMeta.Kind = "CustomResourceDefinition"
		for i := range crd.Spec.Versions {
			if validation := crd.Spec.Versions[i].Schema; validation != nil {
				stripDescriptions(validation.OpenAPIV3Schema)
			}
		}
		out, err := yaml.Marshal(crd)
		if err != nil {
			fmt.Fprintln(os.Stderr, "marshalling", crd.Name, ":", err)
			os.Exit(1)
		}
		file := filepath.Join(os.Args[1], crd.Spec.Group+"_"+crd.Spec.Names.Plural+".yaml")
		if err := os.WriteFile(file, out, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
