//! Go parity table for `sigil_operator::template`.
//!
//! The expectations in `GO_CASES` came from Go 1.26.8 text/template, run by a throwaway program that parses
//! each template with `template.New(name).Parse(src)` (no Funcs, no Option: exactly what
//! spire-controller-manager does) and executes it against SCM's `templateData` built from the same JSON
//! below (`*metav1.ObjectMeta`, `*corev1.PodSpec`, ... from k8s.io/api v0.35.4). `Want::ParseErr` means Go's
//! `Parse` failed, `Want::ExecErr` means `Execute` failed. `SIGIL_DIVERGENCES` are the few documented cases
//! where Sigil deliberately refuses what Go accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sigil_operator::objects::Pod;
use sigil_operator::template::{Template, TemplateError};

#[derive(Debug)]
enum Want {
    Out(&'static str),
    ParseErr,
    ExecErr,
}

const DATA: &str = r##"{
 "pod": {
  "TrustDomain": "example.org",
  "ClusterName": "demo",
  "ClusterDomain": "cluster.local",
  "PodMeta": {
   "name": "web-7d4b9c",
   "namespace": "shop",
   "uid": "0b6f1b7e-3c2a-4d59-9a53-5d1f0e1f2a3b",
   "generateName": "web-",
   "generation": 3,
   "resourceVersion": "12345",
   "labels": {
    "app": "web",
    "app.kubernetes.io/name": "storefront",
    "tier": "frontend",
    "empty": ""
   },
   "annotations": {
    "sigil.io/role": "edge"
   },
   "finalizers": [
    "a/b",
    "c"
   ],
   "ownerReferences": [
    {
     "apiVersion": "apps/v1",
     "kind": "ReplicaSet",
     "name": "web-7d4b9c",
     "uid": "11111111-2222-3333-4444-555555555555",
     "controller": true
    }
   ]
  },
  "PodSpec": {
   "serviceAccountName": "web-sa",
   "serviceAccount": "web-sa",
   "nodeName": "node-1",
   "dnsPolicy": "ClusterFirst",
   "hostNetwork": false,
   "priority": 7,
   "restartPolicy": "Always",
   "nodeSelector": {
    "disk": "ssd"
   },
   "containers": [
    {
     "name": "app",
     "image": "nginx:1.27"
    },
    {
     "name": "sidecar",
     "image": "envoy:1"
    }
   ]
  },
  "NodeMeta": {
   "name": "node-1",
   "uid": "9d0c7a1e-aaaa-bbbb-cccc-000000000001",
   "labels": {
    "topology.kubernetes.io/zone": "z1"
   }
  },
  "NodeSpec": {
   "podCIDR": "10.0.1.0/24",
   "podCIDRs": [
    "10.0.1.0/24",
    "fd00::/64"
   ],
   "providerID": "kind://node-1"
  }
 },
 "bare": {
  "TrustDomain": "example.org",
  "ClusterName": "demo",
  "ClusterDomain": "",
  "PodMeta": {
   "name": "solo",
   "namespace": "default",
   "uid": "22222222-0000-0000-0000-000000000000"
  },
  "PodSpec": {
   "containers": [
    {
     "name": "c"
    }
   ]
  },
  "NodeMeta": {
   "name": "node-2",
   "uid": "33333333-0000-0000-0000-000000000000"
  },
  "NodeSpec": {}
 },
 "parent": {
  "TrustDomain": "example.org",
  "ClusterName": "demo",
  "ClusterDomain": "cluster.local",
  "PodMeta": null,
  "PodSpec": null,
  "NodeMeta": {
   "name": "node-1",
   "uid": "9d0c7a1e-aaaa-bbbb-cccc-000000000001"
  },
  "NodeSpec": {
   "podCIDR": "10.0.1.0/24"
  }
 }
}"##;

const GO_CASES: &[(&str, &str, &str, Want)] = &[
    (
        "chart_default",
        "pod",
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
        Want::Out("spiffe://example.org/ns/shop/sa/web-sa"),
    ),
    (
        "scm_default_parent",
        "parent",
        "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
        Want::Out("spiffe://example.org/spire/agent/k8s_psat/demo/9d0c7a1e-aaaa-bbbb-cccc-000000000001"),
    ),
    (
        "docs_pod_name",
        "pod",
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
        Want::Out("spiffe://example.org/ns/shop/pod/web-7d4b9c"),
    ),
    (
        "docs_dns",
        "pod",
        "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
        Want::Out("web-7d4b9c.shop.svc.cluster.local"),
    ),
    ("docs_selector", "pod", "k8s:sa:{{ .PodSpec.ServiceAccountName }}", Want::Out("k8s:sa:web-sa")),
    ("plain_text", "pod", "no actions at all", Want::Out("no actions at all")),
    ("empty_template", "pod", "", Want::Out("")),
    ("label_dotted", "pod", "{{ .PodMeta.Labels.app }}", Want::Out("web")),
    ("label_index", "pod", "{{ index .PodMeta.Labels \"app.kubernetes.io/name\" }}", Want::Out("storefront")),
    ("label_index_missing", "pod", "[{{ index .PodMeta.Labels \"nope\" }}]", Want::Out("[]")),
    ("label_dotted_missing", "pod", "[{{ .PodMeta.Labels.nope }}]", Want::Out("[<no value>]")),
    ("label_dotted_missing_chain", "pod", "[{{ .PodMeta.Labels.nope.deeper }}]", Want::Out("[<no value>]")),
    ("label_dotted_string_chain", "pod", "[{{ .PodMeta.Labels.app.deeper }}]", Want::ExecErr),
    ("label_nil_map_dotted", "bare", "[{{ .PodMeta.Labels.app }}]", Want::Out("[<no value>]")),
    ("label_nil_map_index", "bare", "[{{ index .PodMeta.Labels \"app\" }}]", Want::Out("[]")),
    ("label_empty_value", "pod", "[{{ .PodMeta.Labels.empty }}]", Want::Out("[]")),
    ("annotation_index", "pod", "{{ index .PodMeta.Annotations \"sigil.io/role\" }}", Want::Out("edge")),
    (
        "labels_print_map",
        "pod",
        "{{ .PodMeta.Labels }}",
        Want::Out("map[app:web app.kubernetes.io/name:storefront empty: tier:frontend]"),
    ),
    ("labels_print_nil_map", "bare", "{{ .PodMeta.Labels }}", Want::Out("map[]")),
    ("node_label_index", "pod", "{{ index .NodeMeta.Labels \"topology.kubernetes.io/zone\" }}", Want::Out("z1")),
    ("node_selector_dotted", "pod", "{{ .PodSpec.NodeSelector.disk }}", Want::Out("ssd")),
    ("label_index_int_key", "pod", "{{ index .PodMeta.Labels 1 }}", Want::ExecErr),
    ("label_lowercase_field", "pod", "{{ .PodMeta.labels.app }}", Want::ExecErr),
    ("uid", "pod", "{{ .PodMeta.UID }}", Want::Out("0b6f1b7e-3c2a-4d59-9a53-5d1f0e1f2a3b")),
    ("uid_wrong_case", "pod", "{{ .PodMeta.Uid }}", Want::ExecErr),
    ("dns_policy", "pod", "{{ .PodSpec.DNSPolicy }}", Want::Out("ClusterFirst")),
    ("unknown_field", "pod", "{{ .PodMeta.Nope }}", Want::ExecErr),
    ("unknown_root", "pod", "{{ .Nope }}", Want::ExecErr),
    ("lower_root", "pod", "{{ .trustDomain }}", Want::ExecErr),
    ("absent_string_field", "pod", "[{{ .PodSpec.Hostname }}]", Want::Out("[]")),
    ("absent_string_field_bare", "bare", "[{{ .PodSpec.ServiceAccountName }}]", Want::Out("[]")),
    ("generation_int", "pod", "{{ .PodMeta.Generation }}", Want::Out("3")),
    ("bool_field", "pod", "{{ .PodSpec.HostNetwork }}", Want::Out("false")),
    ("ptr_int_field", "pod", "{{ .PodSpec.Priority }}", Want::Out("7")),
    ("nil_ptr_field", "pod", "{{ .PodSpec.TerminationGracePeriodSeconds }}", Want::Out("<nil>")),
    ("nil_ptr_struct", "pod", "{{ .PodSpec.SecurityContext }}", Want::Out("nil")),
    ("nil_ptr_struct_field", "pod", "{{ .PodSpec.SecurityContext.RunAsUser }}", Want::ExecErr),
    ("deprecated_sa_go_name", "pod", "{{ .PodSpec.DeprecatedServiceAccount }}", Want::Out("web-sa")),
    ("deprecated_sa_json_name", "pod", "{{ .PodSpec.ServiceAccount }}", Want::ExecErr),
    ("external_id_go_name", "pod", "[{{ .NodeSpec.DoNotUseExternalID }}]", Want::Out("[]")),
    ("finalizers_slice", "pod", "{{ .PodMeta.Finalizers }}", Want::Out("[a/b c]")),
    ("nil_slice", "bare", "{{ .PodMeta.Finalizers }}", Want::Out("[]")),
    ("pod_cidrs", "pod", "{{ .NodeSpec.PodCIDRs }}", Want::Out("[10.0.1.0/24 fd00::/64]")),
    ("provider_id", "pod", "{{ .NodeSpec.ProviderID }}", Want::Out("kind://node-1")),
    ("container_name", "pod", "{{ (index .PodSpec.Containers 0).Name }}", Want::Out("app")),
    ("container_image", "pod", "{{ (index .PodSpec.Containers 1).Image }}", Want::Out("envoy:1")),
    ("container_oob", "pod", "{{ (index .PodSpec.Containers 5).Name }}", Want::ExecErr),
    (
        "owner_kind",
        "pod",
        "{{ (index .PodMeta.OwnerReferences 0).Kind }}/{{ (index .PodMeta.OwnerReferences 0).Name }}",
        Want::Out("ReplicaSet/web-7d4b9c"),
    ),
    ("len_containers", "pod", "{{ len .PodSpec.Containers }}", Want::Out("2")),
    ("len_labels", "pod", "{{ len .PodMeta.Labels }}", Want::Out("4")),
    ("len_nil_labels", "bare", "{{ len .PodMeta.Labels }}", Want::Out("0")),
    ("len_string", "pod", "{{ len .PodMeta.Name }}", Want::Out("10")),
    ("len_int", "pod", "{{ len 3 }}", Want::ExecErr),
    ("len_missing", "pod", "{{ len .PodMeta.Labels.nope }}", Want::ExecErr),
    ("nil_podmeta_field", "parent", "{{ .PodMeta.Name }}", Want::ExecErr),
    ("nil_podmeta_print", "parent", "{{ .PodMeta }}", Want::Out("nil")),
    ("nil_podmeta_if", "parent", "{{ if .PodMeta }}yes{{ else }}no{{ end }}", Want::Out("no")),
    ("nil_podmeta_with", "parent", "{{ with .PodMeta }}{{ .Name }}{{ else }}none{{ end }}", Want::Out("none")),
    ("with_podmeta", "pod", "{{ with .PodMeta }}{{ .Namespace }}/{{ .Name }}{{ end }}", Want::Out("shop/web-7d4b9c")),
    (
        "with_dollar",
        "pod",
        "{{ with .PodMeta }}{{ $.TrustDomain }}/{{ .Name }}{{ end }}",
        Want::Out("example.org/web-7d4b9c"),
    ),
    ("dollar_root", "pod", "{{ $.ClusterName }}", Want::Out("demo")),
    ("printf_s", "pod", "{{ printf \"%s-%s\" .PodMeta.Namespace .PodMeta.Name }}", Want::Out("shop-web-7d4b9c")),
    ("printf_d", "pod", "{{ printf \"%d\" .PodMeta.Generation }}", Want::Out("3")),
    ("printf_v", "pod", "{{ printf \"%v|%v|%v\" .PodMeta.Name 42 true }}", Want::Out("web-7d4b9c|42|true")),
    ("printf_q", "pod", "{{ printf \"%q\" .PodMeta.Name }}", Want::Out("\"web-7d4b9c\"")),
    ("printf_q_escape", "pod", "{{ printf \"%q\" \"a\\\"b\\\\c\\n\" }}", Want::Out("\"a\\\"b\\\\c\\n\"")),
    ("printf_pct", "pod", "{{ printf \"100%%\" }}", Want::Out("100%")),
    ("printf_bad_verb", "pod", "{{ printf \"%d\" .PodMeta.Name }}", Want::Out("%!d(string=web-7d4b9c)")),
    ("printf_s_int", "pod", "{{ printf \"%s\" 5 }}", Want::Out("%!s(int=5)")),
    ("printf_missing_arg", "pod", "{{ printf \"%s %s\" \"a\" }}", Want::Out("a %!s(MISSING)")),
    ("printf_extra_arg", "pod", "{{ printf \"%s\" \"a\" \"b\" }}", Want::Out("a%!(EXTRA string=b)")),
    ("printf_missing_key", "pod", "{{ printf \"%s\" .PodMeta.Labels.nope }}", Want::Out("%!s(<nil>)")),
    ("printf_pipe", "pod", "{{ .PodMeta.Name | printf \"pod-%s\" }}", Want::Out("pod-web-7d4b9c")),
    ("printf_pipe_missing", "pod", "{{ .PodMeta.Labels.nope | printf \"%s\" }}", Want::Out("%!s(<nil>)")),
    ("printf_non_string_format", "pod", "{{ printf 5 }}", Want::ExecErr),
    ("printf_v_bool", "pod", "{{ printf \"%v\" .PodSpec.HostNetwork }}", Want::Out("false")),
    ("printf_d_float", "pod", "{{ printf \"%d\" 1.5 }}", Want::Out("%!d(float64=1.5)")),
    ("printf_v_float", "pod", "{{ printf \"%v %v %v\" 1.5 1e6 0.0001 }}", Want::Out("1.5 1e+06 0.0001")),
    (
        "printf_v_map",
        "pod",
        "{{ printf \"%v\" .PodMeta.Labels }}",
        Want::Out("map[app:web app.kubernetes.io/name:storefront empty: tier:frontend]"),
    ),
    ("print_multi", "pod", "{{ print \"a\" \"b\" 1 2 true }}", Want::Out("ab1 2 true")),
    ("print_nums", "pod", "{{ print 1 2 }}", Want::Out("1 2")),
    ("print_missing", "pod", "{{ print .PodMeta.Labels.nope }}", Want::Out("<nil>")),
    ("print_nothing", "pod", "[{{ print }}]", Want::Out("[]")),
    ("float_literal", "pod", "{{ 1.5 }}", Want::Out("1.5")),
    ("float_exp", "pod", "{{ 1e6 }} {{ 123456.0 }} {{ 1e21 }} {{ 0.00001 }}", Want::Out("1e+06 123456 1e+21 1e-05")),
    ("int_literal", "pod", "{{ 42 }} {{ -7 }} {{ 0x1F }}", Want::Out("42 -7 31")),
    ("bool_literal", "pod", "{{ true }} {{ false }}", Want::Out("true false")),
    ("string_literal", "pod", "{{ \"quoted \\u00e9 \\t\" }}", Want::Out("quoted é \t")),
    ("raw_string", "pod", "{{ `raw \\n` }}", Want::Out("raw \\n")),
    ("if_true", "pod", "{{ if .PodMeta.Labels.app }}has app{{ end }}", Want::Out("has app")),
    ("if_missing", "pod", "[{{ if .PodMeta.Labels.nope }}has{{ end }}]", Want::Out("[]")),
    ("if_else", "pod", "{{ if eq .PodMeta.Namespace \"kube-system\" }}sys{{ else }}user{{ end }}", Want::Out("user")),
    (
        "if_else_if",
        "pod",
        "{{ if eq .PodMeta.Namespace \"a\" }}A{{ else if eq .PodMeta.Namespace \"shop\" }}SHOP{{ else }}other{{ end }}",
        Want::Out("SHOP"),
    ),
    ("if_empty_string", "pod", "{{ if .PodMeta.Labels.empty }}y{{ else }}n{{ end }}", Want::Out("n")),
    ("if_zero_int", "pod", "{{ if 0 }}y{{ else }}n{{ end }}", Want::Out("n")),
    ("if_nil_map", "bare", "{{ if .PodMeta.Labels }}y{{ else }}n{{ end }}", Want::Out("n")),
    ("if_and_or", "pod", "{{ if and .PodMeta.Labels.app (or .PodMeta.Labels.nope \"x\") }}y{{ end }}", Want::Out("y")),
    (
        "and_value",
        "pod",
        "{{ and \"a\" \"b\" }}|{{ and \"\" \"b\" }}|{{ or \"\" \"c\" }}|{{ or 0 \"\" }}",
        Want::Out("b||c|"),
    ),
    ("and_short_circuit", "pod", "{{ or \"x\" .PodMeta.Nope }}", Want::Out("x")),
    ("and_no_short_circuit", "pod", "{{ and \"x\" .PodMeta.Nope }}", Want::ExecErr),
    ("not", "pod", "{{ not true }} {{ not \"\" }} {{ not .PodMeta.Labels.nope }}", Want::Out("false true true")),
    ("with_else", "pod", "{{ with .PodMeta.Labels.nope }}{{ . }}{{ else }}default{{ end }}", Want::Out("default")),
    ("with_value", "pod", "{{ with .PodMeta.Labels.app }}app={{ . }}{{ end }}", Want::Out("app=web")),
    (
        "else_with",
        "pod",
        "{{ with .PodMeta.Labels.nope }}a{{ else with .PodMeta.Labels.tier }}t={{ . }}{{ end }}",
        Want::Out("t=frontend"),
    ),
    (
        "nested_if",
        "pod",
        "{{ if .PodMeta }}{{ if .PodSpec.NodeName }}{{ .PodSpec.NodeName }}{{ end }}{{ end }}",
        Want::Out("node-1"),
    ),
    ("eq_multi", "pod", "{{ eq .PodMeta.Namespace \"a\" \"b\" \"shop\" }}", Want::Out("true")),
    ("eq_uid", "pod", "{{ eq .PodMeta.UID \"0b6f1b7e-3c2a-4d59-9a53-5d1f0e1f2a3b\" }}", Want::Out("true")),
    ("eq_int_float", "pod", "{{ eq 1 1.0 }}", Want::ExecErr),
    ("eq_int_string", "pod", "{{ eq 1 \"1\" }}", Want::ExecErr),
    ("eq_missing_string", "pod", "{{ eq .PodMeta.Labels.nope \"\" }}", Want::Out("false")),
    ("eq_missing_missing", "pod", "{{ eq .PodMeta.Labels.nope .PodMeta.Labels.nope2 }}", Want::Out("true")),
    ("eq_one_arg", "pod", "{{ eq 1 }}", Want::ExecErr),
    ("eq_bool", "pod", "{{ eq true true }} {{ eq .PodSpec.HostNetwork false }}", Want::Out("true true")),
    ("ne", "pod", "{{ ne .PodMeta.Name \"x\" }} {{ ne 1 1 }}", Want::Out("true false")),
    (
        "lt_gt",
        "pod",
        "{{ lt 1 2 }} {{ gt 1 2 }} {{ lt \"a\" \"b\" }} {{ gt 2.5 1.5 }}",
        Want::Out("true false true true"),
    ),
    ("lt_mixed", "pod", "{{ lt 1 \"a\" }}", Want::ExecErr),
    ("lt_bool", "pod", "{{ lt true false }}", Want::ExecErr),
    ("eq_int_ptr", "pod", "{{ eq .PodSpec.Priority 7 }}", Want::ExecErr),
    ("eq_gen", "pod", "{{ eq .PodMeta.Generation 3 }}", Want::Out("true")),
    ("ne_three", "pod", "{{ ne 1 2 3 }}", Want::ExecErr),
    ("eq_nil_lit", "pod", "{{ eq .PodMeta.Labels.nope nil }}", Want::Out("true")),
    ("eq_map", "pod", "{{ eq .PodMeta.Labels .PodMeta.Labels }}", Want::ExecErr),
    ("trim_both", "pod", "a  {{- \"b\" -}}  c", Want::Out("abc")),
    ("trim_newlines", "pod", "spiffe://{{ .TrustDomain }}\n  {{- \"/x\" }}\n", Want::Out("spiffe://example.org/x\n")),
    ("trim_no_space_is_number", "pod", "a {{-3}} b", Want::Out("a -3 b")),
    ("comment", "pod", "a{{/* a comment */}}b", Want::Out("ab")),
    ("comment_trim", "pod", "a  {{- /* c */ -}}  b", Want::Out("ab")),
    ("comment_unclosed", "pod", "a{{/* c }}b", Want::ParseErr),
    ("comment_bad_end", "pod", "a{{/* c */ x}}b", Want::ParseErr),
    ("comment_space_before", "pod", "a{{ /* c */ }}b", Want::ParseErr),
    ("pipe_len", "pod", "{{ .PodMeta.Name | len }}", Want::Out("10")),
    ("pipe_chain", "pod", "{{ .PodMeta.Name | printf \"%s-x\" | printf \"%s-y\" }}", Want::Out("web-7d4b9c-x-y")),
    (
        "paren_arg",
        "pod",
        "{{ printf \"%s/%s\" (index .PodMeta.Labels \"app\") .PodMeta.Name }}",
        Want::Out("web/web-7d4b9c"),
    ),
    ("paren_field", "pod", "{{ (.PodMeta).Name }}", Want::Out("web-7d4b9c")),
    ("paren_pipe", "pod", "{{ (.PodMeta.Name | len) }}", Want::Out("10")),
    ("nested_index", "pod", "{{ index .PodMeta.Labels (printf \"%s\" \"tier\") }}", Want::Out("frontend")),
    ("index_no_args", "pod", "{{ index .PodMeta.Name }}", Want::Out("web-7d4b9c")),
    ("index_string", "pod", "{{ index .PodMeta.Name 0 }}", Want::Out("119")),
    ("index_struct", "pod", "{{ index .PodMeta \"name\" }}", Want::ExecErr),
    ("index_nil", "pod", "{{ index nil 1 }}", Want::ExecErr),
    ("index_missing", "pod", "{{ index .PodMeta.Labels.nope \"a\" }}", Want::ExecErr),
    ("dot_root_print", "pod", "{{ .TrustDomain | printf \"%s\" }}", Want::Out("example.org")),
    ("unclosed_action", "pod", "spiffe://{{ .TrustDomain ", Want::ParseErr),
    ("unclosed_if", "pod", "{{ if true }}x", Want::ParseErr),
    ("unexpected_end", "pod", "x{{ end }}", Want::ParseErr),
    ("unexpected_else", "pod", "x{{ else }}", Want::ParseErr),
    ("undefined_func", "pod", "{{ lower .PodMeta.Name }}", Want::ParseErr),
    ("empty_action", "pod", "{{}}", Want::ParseErr),
    ("empty_action_space", "pod", "{{   }}", Want::ParseErr),
    ("if_no_pipe", "pod", "{{ if }}x{{ end }}", Want::ParseErr),
    ("nil_command", "pod", "{{ nil }}", Want::ExecErr),
    ("pipe_to_literal", "pod", "{{ .PodMeta.Name | \"x\" }}", Want::ParseErr),
    ("bad_string", "pod", "{{ \"unterminated }}", Want::ParseErr),
    ("bad_number", "pod", "{{ 12abc }}", Want::ParseErr),
    ("unbalanced_paren", "pod", "{{ (.PodMeta.Name }}", Want::ParseErr),
    ("extra_paren", "pod", "{{ .PodMeta.Name) }}", Want::ParseErr),
    ("undefined_var", "pod", "{{ $x }}", Want::ParseErr),
    ("bad_char", "pod", "{{ .PodMeta.Name # }}", Want::ParseErr),
    ("end_with_arg", "pod", "{{ if true }}x{{ end true }}", Want::ParseErr),
    ("field_on_literal", "pod", "{{ \"a\".B }}", Want::ParseErr),
    ("args_to_field", "pod", "{{ .PodMeta.Name \"x\" }}", Want::ExecErr),
    ("args_to_literal", "pod", "{{ 3 4 }}", Want::ExecErr),
    ("double_pipe", "pod", "{{ .A || .B }}", Want::ParseErr),
    ("trailing_pipe", "pod", "{{ .PodMeta.Name | }}", Want::Out("web-7d4b9c")),
    ("leading_pipe", "pod", "{{ | len }}", Want::ParseErr),
    ("wrong_arity_len", "pod", "{{ len \"a\" \"b\" }}", Want::ExecErr),
    ("wrong_arity_not", "pod", "{{ not }}", Want::ExecErr),
    ("ne_one_arg", "pod", "{{ ne 1 }}", Want::ExecErr),
    ("else_twice", "pod", "{{ if true }}a{{ else }}b{{ else }}c{{ end }}", Want::ParseErr),
    ("else_in_with_else_if", "pod", "{{ with .PodMeta }}a{{ else if true }}b{{ end }}", Want::ParseErr),
    ("delim_in_text", "pod", "a }} b", Want::Out("a }} b")),
    ("single_brace", "pod", "a { b } c", Want::Out("a { b } c")),
    ("func_as_value_no_args", "pod", "{{ and }}", Want::ExecErr),
    ("print_in_pipe", "pod", "{{ \"a\" | print \"b\" }}", Want::Out("ba")),
    ("call_missing_paren", "pod", "{{ printf \"%s\" index .PodMeta.Labels \"app\" }}", Want::ExecErr),
    ("eq_nilptr_nil", "parent", "{{ eq .PodMeta nil }}", Want::Out("true")),
    ("print_nil", "pod", "{{ print nil }}", Want::Out("<nil>")),
    ("len_nil", "pod", "{{ len nil }}", Want::ExecErr),
    ("not_nil", "pod", "{{ not nil }}", Want::Out("true")),
    ("print_nilptr_int", "pod", "{{ print .PodSpec.TerminationGracePeriodSeconds }}", Want::Out("<nil>")),
    ("printf_nilptr_struct", "parent", "{{ printf \"%v\" .PodMeta }}", Want::Out("nil")),
    ("index_podcidrs", "pod", "{{ index .NodeSpec.PodCIDRs 1 }}", Want::Out("fd00::/64")),
    ("index_neg", "pod", "{{ index .NodeSpec.PodCIDRs -1 }}", Want::ExecErr),
    ("index_nested_missing", "pod", "[{{ index .PodMeta.Labels \"app\" \"x\" }}]", Want::ExecErr),
    ("owner_controller", "pod", "{{ (index .PodMeta.OwnerReferences 0).Controller }}", Want::Out("true")),
    (
        "with_nested_dot",
        "pod",
        "{{ with .PodMeta.Labels }}{{ .app }}-{{ index . \"tier\" }}{{ end }}",
        Want::Out("web-frontend"),
    ),
    (
        "if_else_chain_trim",
        "pod",
        "{{- if eq .PodSpec.NodeName \"node-2\" -}}\n two\n{{- else if eq .PodSpec.NodeName \"node-1\" -}}\n one\n{{- else -}}\n none\n{{- end -}}",
        Want::Out("one"),
    ),
    ("multiline_text", "pod", "line1\nline2 {{ .ClusterName }}\n", Want::Out("line1\nline2 demo\n")),
    ("unicode_text", "pod", "héllo {{ \"wörld\" }} ✓", Want::Out("héllo wörld ✓")),
    (
        "print_uid_gen",
        "pod",
        "{{ print .PodMeta.UID .PodMeta.Generation }}",
        Want::Out("0b6f1b7e-3c2a-4d59-9a53-5d1f0e1f2a3b3"),
    ),
    ("deep_parens", "pod", "{{ ((((.PodMeta.Name)))) }}", Want::Out("web-7d4b9c")),
    ("printf_trailing_pct", "pod", "{{ printf \"abc%\" }}", Want::Out("abc%!(NOVERB)")),
    ("creation_ts_if", "pod", "{{ if .PodMeta.DeletionTimestamp }}deleting{{ else }}live{{ end }}", Want::Out("live")),
    ("cluster_domain_empty", "bare", "[{{ .ClusterDomain }}]", Want::Out("[]")),
    ("root_print_td_pipe", "pod", "{{ $.TrustDomain | len }}", Want::Out("11")),
    ("and_missing_last", "pod", "[{{ and \"x\" .PodMeta.Labels.nope }}]", Want::Out("[<no value>]")),
    ("or_all_false", "pod", "[{{ or \"\" 0 }}]", Want::Out("[0]")),
    ("gt_strings", "pod", "{{ gt .PodMeta.Name \"a\" }}", Want::Out("true")),
    ("eq_str_uid_index", "pod", "{{ eq (index .PodMeta.Labels \"app\") \"web\" }}", Want::Out("true")),
    ("ne_missing", "pod", "{{ ne .PodMeta.Labels.nope \"x\" }}", Want::Out("true")),
    ("space_trim_tabs", "pod", "a\t\n {{- \"b\" -}} \t\nc", Want::Out("abc")),
    ("trim_left_only_comment", "pod", "x  {{- /* c */}}  y", Want::Out("x  y")),
    ("number_plus", "pod", "{{ +5 }}", Want::Out("5")),
    ("octal", "pod", "{{ 010 }} {{ 0o17 }} {{ 0b101 }}", Want::Out("8 15 5")),
    ("underscore_num", "pod", "{{ 1_000 }}", Want::Out("1000")),
    (
        "float_neg",
        "pod",
        "{{ -1.25 }} {{ 2.0 }} {{ 1e-7 }} {{ 123456789.0 }}",
        Want::Out("-1.25 2 1e-07 1.23456789e+08"),
    ),
    ("with_missing_field_error", "pod", "{{ with .PodMeta }}{{ .Nope }}{{ end }}", Want::ExecErr),
    ("if_nil_ptr_field_error", "parent", "{{ if .PodMeta.Name }}x{{ end }}", Want::ExecErr),
    ("sprint_mixed", "pod", "{{ print 1 \"a\" 2 3 \"b\" \"c\" true false }}", Want::Out("1a2 3bctrue false")),
    ("eq_labels_nil", "pod", "{{ eq .PodMeta.Labels nil }}", Want::Out("false")),
    ("eq_nil_labels_nil", "bare", "{{ eq .PodMeta.Labels nil }}", Want::Out("true")),
    ("eq_ptr_nil", "pod", "{{ eq .PodSpec.Priority nil }}", Want::Out("false")),
    ("eq_podmeta_nil_pod", "pod", "{{ eq .PodMeta nil }}", Want::Out("false")),
    ("eq_podmeta_podspec", "pod", "{{ eq .PodMeta .PodSpec }}", Want::Out("false")),
    ("eq_nilptr_missing", "pod", "{{ eq .PodSpec.SecurityContext .PodMeta.Labels.nope }}", Want::Out("true")),
    ("eq_slice_nil", "bare", "{{ eq .PodMeta.Finalizers nil }}", Want::Out("true")),
    ("ne_podmeta_nil", "parent", "{{ ne .PodMeta nil }}", Want::Out("false")),
    ("nil_affinity", "pod", "{{ .PodSpec.Affinity }}", Want::Out("nil")),
    ("nil_runtime_class", "pod", "{{ .PodSpec.RuntimeClassName }}", Want::Out("<nil>")),
    ("random_00", "parent", "{{ lt .PodSpec.NodeName \"x\" .PodSpec.Priority }}", Want::ExecErr),
    ("random_01", "pod", "{{ lt .PodMeta.Labels true }}", Want::ExecErr),
    ("random_02", "pod", "{{ and 0 .NodeSpec.PodCIDRs }}", Want::Out("0")),
    ("random_03", "bare", "{{ not .PodSpec.HostNetwork }}", Want::Out("true")),
    ("random_04", "bare", "{{ not .PodMeta.Labels }}", Want::Out("true")),
    ("random_05", "parent", "{{ printf \"%s\" .PodMeta.Labels.nope .PodMeta.Labels.app 0 }}", Want::ExecErr),
    ("random_06", "pod", "{{ not 1 nil (index .PodMeta.Labels \"app\") }}", Want::ExecErr),
    ("random_07", "bare", "{{ if and (index .PodMeta.Labels \"app\") }}T{{ else }}F{{ end }}", Want::Out("F")),
    ("random_08", "parent", "{{ if gt  }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_09", "parent", "{{ (index .PodMeta.Labels \"app\") | or }}", Want::ExecErr),
    ("random_10", "parent", "{{ with len .PodMeta.UID }}[{{ . }}]{{ else }}none{{ end }}", Want::ExecErr),
    ("random_11", "pod", "{{ print  }}", Want::Out("")),
    ("random_12", "bare", "{{ print .PodSpec.Priority 0 .PodSpec.HostNetwork }}", Want::Out("<nil> 0 false")),
    ("random_13", "parent", "{{ if and 1.5 $.TrustDomain }}T{{ else }}F{{ end }}", Want::Out("T")),
    ("random_14", "parent", "{{ index 1.5 true }}", Want::ExecErr),
    (
        "random_15",
        "bare",
        "{{ with print .NodeSpec.PodCIDRs nil 0 }}[{{ . }}]{{ else }}none{{ end }}",
        Want::Out("[[] <nil> 0]"),
    ),
    ("random_16", "bare", "{{ gt .PodMeta.UID }}", Want::ExecErr),
    ("random_17", "pod", "{{ lt  }}", Want::ExecErr),
    ("random_18", "parent", "{{ and  }}", Want::ExecErr),
    ("random_19", "parent", "{{ index true .NodeSpec.PodCIDRs }}", Want::ExecErr),
    ("random_20", "parent", "{{ if gt $.TrustDomain .PodMeta.UID .PodMeta }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_21", "pod", "{{ not 0 }}", Want::Out("true")),
    ("random_22", "bare", "{{ len .PodSpec.Priority 0 }}", Want::ExecErr),
    ("random_23", "parent", "{{ not 0 .PodMeta.Labels.nope }}", Want::ExecErr),
    ("random_24", "bare", "{{ if ne .PodMeta.UID }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_25", "pod", "{{ not  }}", Want::ExecErr),
    ("random_26", "pod", "{{ if ne  }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_27", "bare", "{{ gt  }}", Want::ExecErr),
    ("random_28", "pod", "{{ eq nil }}", Want::ExecErr),
    ("random_29", "bare", "{{ .PodMeta.Labels | or }}", Want::Out("map[]")),
    ("random_30", "parent", "{{ len .PodSpec.Priority $.TrustDomain .PodMeta.Generation }}", Want::ExecErr),
    ("random_31", "bare", "{{ not .PodMeta.Labels }}", Want::Out("true")),
    ("random_32", "parent", "{{ .PodMeta.Labels.app | ne }}", Want::ExecErr),
    ("random_33", "pod", "{{ lt  }}", Want::ExecErr),
    ("random_34", "parent", "{{ \"x\" | len }}", Want::Out("1")),
    ("random_35", "parent", "{{ if lt  }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_36", "parent", "{{ with gt nil \"x\" }}[{{ . }}]{{ else }}none{{ end }}", Want::ExecErr),
    (
        "random_37",
        "pod",
        "{{ print nil .PodMeta.Labels.app (index .PodMeta.Labels \"app\") }}",
        Want::Out("<nil>webweb"),
    ),
    ("random_38", "bare", "{{ and  }}", Want::ExecErr),
    ("random_39", "bare", "{{ if or true .PodSpec.Priority }}T{{ else }}F{{ end }}", Want::Out("T")),
    ("random_40", "pod", "{{ ne .PodSpec.HostNetwork .PodSpec.NodeName }}", Want::ExecErr),
    ("random_41", "pod", "{{ if printf \"%s\"  }}T{{ else }}F{{ end }}", Want::Out("T")),
    ("random_42", "bare", "{{ index 1.5 .PodMeta.Labels.nope }}", Want::ExecErr),
    ("random_43", "bare", "{{ true | and }}", Want::Out("true")),
    (
        "random_44",
        "bare",
        "{{ with ne $.TrustDomain .PodMeta.UID }}[{{ . }}]{{ else }}none{{ end }}",
        Want::Out("[true]"),
    ),
    ("random_45", "bare", "{{ .PodSpec.NodeName | print }}", Want::Out("")),
    ("random_46", "parent", "{{ print .PodSpec.NodeName nil 0 }}", Want::ExecErr),
    ("random_47", "bare", "{{ eq  }}", Want::ExecErr),
    ("random_48", "pod", "{{ $.TrustDomain | eq }}", Want::ExecErr),
    ("random_49", "pod", "{{ if and nil .PodMeta.Labels.nope }}T{{ else }}F{{ end }}", Want::Out("F")),
    ("random_50", "parent", "{{ print  }}", Want::Out("")),
    ("random_51", "pod", "{{ if eq .PodMeta.Generation }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_52", "bare", "{{ not 0 .PodMeta.Labels }}", Want::ExecErr),
    ("random_53", "bare", "{{ if eq \"\" }}T{{ else }}F{{ end }}", Want::ExecErr),
    ("random_54", "parent", "{{ len  }}", Want::ExecErr),
    ("random_55", "pod", "{{ gt .PodMeta.Labels.nope (index .PodMeta.Labels \"app\") }}", Want::ExecErr),
    ("random_56", "pod", "{{ if index true }}T{{ else }}F{{ end }}", Want::Out("T")),
    ("random_57", "pod", "{{ \"\" | printf \"%s\" }}", Want::Out("")),
    ("random_58", "parent", "{{ (index .PodMeta.Labels \"app\") | printf \"%s\" }}", Want::ExecErr),
    ("random_59", "pod", "{{ gt .PodMeta.Labels.app \"x\" }}", Want::Out("false")),
    ("random_60", "parent", "else.HostNetwork{{-1.5}}}}\"%d %v\"", Want::Out("else.HostNetwork-1.5}}\"%d %v\"")),
    ("random_61", "parent", "\"%q\".TrustDomain /*or{{- \"%s\"}}$.", Want::Out("\"%q\".TrustDomain /*or%s$.")),
    ("random_62", "parent", "\"%d %v\"/*{{- \n and\n.TrustDomain}}", Want::Out("\"%d %v\"/*example.org")),
    (
        "random_63",
        "bare",
        "a.UID{{-0 -}}end.Finalizers.NodeMeta.Finalizers",
        Want::Out("a.UID0end.Finalizers.NodeMeta.Finalizers"),
    ),
    ("random_64", "bare", "eqa).Name\"x\".}}{{- 0}} ne", Want::Out("eqa).Name\"x\".}}0 ne")),
    ("random_65", "pod", "falseend.app.PodSpec1.5}}", Want::Out("falseend.app.PodSpec1.5}}")),
    ("random_66", "parent", "print.UID", Want::Out("print.UID")),
    ("random_67", "parent", "else.Labels(indexneelse", Want::Out("else.Labels(indexneelse")),
    ("random_68", "parent", "printf\"%s\"eq", Want::Out("printf\"%s\"eq")),
    ("random_69", "pod", "0(", Want::Out("0(")),
    ("random_70", "bare", "énot", Want::Out("énot")),
    ("random_71", "bare", "-1`r`\".PodMetaltif", Want::Out("-1`r`\".PodMetaltif")),
    ("random_72", "bare", ".Containers.elseend}}", Want::Out(".Containers.elseend}}")),
    (
        "random_73",
        "parent",
        ".NodeSpec.app$./*not-.SecurityContextlt",
        Want::Out(".NodeSpec.app$./*not-.SecurityContextlt"),
    ),
    ("random_74", "pod", "#*/nilgt -}}-lt", Want::Out("#*/nilgt -}}-lt")),
];

const SIGIL_DIVERGENCES: &[(&str, &str, &str, Want)] = &[
    // Go: 0x1c130d7bf7bc
    ("printf_ptr", "pod", "{{ printf \"%v\" .PodSpec.Priority }}", Want::ExecErr),
    // Go: a/bc
    ("range_unsupported_go_ok", "pod", "{{ range .PodMeta.Finalizers }}{{ . }}{{ end }}", Want::ParseErr),
];

fn check(cases: &[(&str, &str, &str, Want)]) {
    check_data(cases, serde_json::from_str(DATA).unwrap());
}

/// The data sets with `.PodMeta` and `.PodSpec` as the operator gives them to templates: through the compact
/// form it keeps each pod in (`objects::Pod`), which must give back exactly the JSON it was made from.
fn data_through_kept_pods() -> serde_json::Value {
    let mut data: serde_json::Value = serde_json::from_str(DATA).unwrap();
    let mut converted = 0;
    for set in data.as_object_mut().unwrap().values_mut() {
        let (meta, spec) = (set["PodMeta"].clone(), set["PodSpec"].clone());
        if let Some(pod) = Pod::from_json(meta, spec) {
            set["PodMeta"] = pod.meta_value();
            set["PodSpec"] = pod.spec_value();
            converted += 1;
        }
    }
    assert!(converted > 0, "some data set has a pod");
    data
}

fn check_data(cases: &[(&str, &str, &str, Want)], data: serde_json::Value) {
    let mut failures = Vec::new();
    for (name, set, src, want) in cases {
        let got = Template::parse(src).and_then(|t| t.render(&data[*set]));
        let ok = match (want, &got) {
            (Want::Out(w), Ok(g)) => w == g,
            (Want::ParseErr, Err(TemplateError::Parse { .. } | TemplateError::Unsupported { .. })) => true,
            (Want::ExecErr, Err(TemplateError::Exec { .. })) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: template {src:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn template_matches_go_text_template() {
    assert!(GO_CASES.len() >= 40);
    check(GO_CASES);
}

#[test]
fn template_documented_divergences_from_go() {
    check(SIGIL_DIVERGENCES);
}

#[test]
fn template_matches_go_through_the_kept_pod_form() {
    check_data(GO_CASES, data_through_kept_pods());
    check_data(SIGIL_DIVERGENCES, data_through_kept_pods());
}
