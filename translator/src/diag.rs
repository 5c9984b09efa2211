//! Diagnostics: what the translator tells the user about their YAML, `istioctl analyze` style.
//!
//! Every diagnostic names where (file, line, column), what (resource kind/namespace/name and the
//! field path such as `spec.http[1].mirror.subset`), the bad value, a stable code and a hint.

use std::fmt;

use serde::Serialize;

/// How bad a diagnostic is. `Error` makes `validate` exit 1; the resource it names is dropped
/// (or the field is ignored) and the rest still translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// Stable diagnostic codes. Where Istio's analyzer has an equivalent message we reuse its
/// `IST` code so users can search for it; the rest are ours (`SP`).
/// Codes are never renumbered: add new ones at the end of their group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    // --- input (parsing and schema) ---
    /// The file is not valid YAML.
    YamlSyntax,
    /// A field that does not exist in the Istio API (usually a typo such as `subest`).
    UnknownField,
    /// A field that exists in the Istio API but that shadowplane does not implement yet.
    UnsupportedField,
    /// A Kubernetes kind that is not an Istio networking resource (Deployment, Service, ...).
    SkippedKind,
    /// A value of the wrong type or shape (string where a number is expected, bad duration, ...).
    InvalidValue,
    /// A required field is missing (`metadata.name`, `spec.host`, `destination.host`, ...).
    MissingField,
    /// The same kind/namespace/name is defined twice (in one file or across files).
    DuplicateResource,
    /// A deprecated field (`mirrorPercent`, `consecutiveErrors`, ...): still honoured.
    DeprecatedField,
    /// An `apiVersion` that is not `networking.istio.io/{v1alpha3,v1beta1,v1}`.
    UnsupportedApiVersion,

    // --- references (IST codes where Istio has them) ---
    /// IST0101: a referenced host or subset does not exist.
    ReferencedResourceNotFound,
    /// IST0109: two mesh VirtualServices claim the same host.
    ConflictingVirtualServiceHosts,
    /// IST0112: destination on a multi-port service without `port`.
    DestinationPortSelectorRequired,
    /// IST0130: a rule can never match because an earlier rule matches everything.
    VirtualServiceUnreachableRule,
    /// IST0174: a DestinationRule host matches no service.
    UnknownDestinationRuleHost,
    /// IST0173: a subset's labels select no endpoint.
    SubsetSelectsNoEndpoints,

    // --- semantic validation (ours) ---
    /// `mirror` and `mirrors` on one HTTP route.
    MirrorAndMirrors,
    /// A percentage outside 0..=100.
    PercentageOutOfRange,
    /// `redirect` or `directResponse` combined with `route`, `fault`, `rewrite` or each other,
    /// or a rule with none of route/redirect/directResponse.
    ConflictingRouteAction,
    /// A regular expression Envoy's RE2 engine would reject.
    InvalidRegex,
    /// Negative weight or a total weight of 0 over several destinations.
    InvalidWeight,
    /// A Gateway reference (`gateways:`) to a Gateway that does not exist.
    GatewayNotFound,
    /// The authority is set in more than one place (rewrite.authority, headers `:authority`/`host`).
    AuthorityConflict,
    /// A redirect code Envoy cannot express (not 301, 302, 303, 307, 308).
    InvalidRedirectCode,
    /// Duplicate subset names in a DestinationRule, or duplicate hosts in a VirtualService.
    DuplicateName,
}

impl Code {
    /// The stable identifier printed in messages and JSON (`IST0101`, `SP0002`).
    pub fn id(self) -> &'static str {
        match self {
            Code::YamlSyntax => "SP0001",
            Code::UnknownField => "SP0002",
            Code::UnsupportedField => "SP0003",
            Code::SkippedKind => "SP0004",
            Code::InvalidValue => "SP0005",
            Code::MissingField => "SP0006",
            Code::DuplicateResource => "SP0007",
            Code::DeprecatedField => "SP0008",
            Code::UnsupportedApiVersion => "SP0009",
            Code::ReferencedResourceNotFound => "IST0101",
            Code::ConflictingVirtualServiceHosts => "IST0109",
            Code::DestinationPortSelectorRequired => "IST0112",
            Code::VirtualServiceUnreachableRule => "IST0130",
            Code::UnknownDestinationRuleHost => "IST0174",
            Code::SubsetSelectsNoEndpoints => "IST0173",
            Code::MirrorAndMirrors => "SP0101",
            Code::PercentageOutOfRange => "SP0102",
            Code::ConflictingRouteAction => "SP0103",
            Code::InvalidRegex => "SP0104",
            Code::InvalidWeight => "SP0105",
            Code::GatewayNotFound => "SP0106",
            Code::AuthorityConflict => "SP0107",
            Code::InvalidRedirectCode => "SP0108",
            Code::DuplicateName => "SP0109",
        }
    }

    /// A short kebab-case name for the code (`undefined-subset` style), for JSON consumers.
    pub fn name(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::UnknownField => "unknown-field",
            Code::UnsupportedField => "unsupported-field",
            Code::SkippedKind => "skipped-kind",
            Code::InvalidValue => "invalid-value",
            Code::MissingField => "missing-field",
            Code::DuplicateResource => "duplicate-resource",
            Code::DeprecatedField => "deprecated-field",
            Code::UnsupportedApiVersion => "unsupported-api-version",
            Code::ReferencedResourceNotFound => "referenced-resource-not-found",
            Code::ConflictingVirtualServiceHosts => "conflicting-virtual-service-hosts",
            Code::DestinationPortSelectorRequired => "destination-port-selector-required",
            Code::VirtualServiceUnreachableRule => "virtual-service-unreachable-rule",
            Code::UnknownDestinationRuleHost => "unknown-destination-rule-host",
            Code::SubsetSelectsNoEndpoints => "subset-selects-no-endpoints",
            Code::MirrorAndMirrors => "mirror-and-mirrors",
            Code::PercentageOutOfRange => "percentage-out-of-range",
            Code::ConflictingRouteAction => "conflicting-route-action",
            Code::InvalidRegex => "invalid-regex",
            Code::InvalidWeight => "invalid-weight",
            Code::GatewayNotFound => "gateway-not-found",
            Code::AuthorityConflict => "authority-conflict",
            Code::InvalidRedirectCode => "invalid-redirect-code",
            Code::DuplicateName => "duplicate-name",
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// Which resource a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A position in a source file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One finding about the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    /// Where in which file; `None` only when there is no file (e.g. a cross-file check with no
    /// single place to point at).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    /// Field path inside the resource, e.g. `spec.http[1].mirror.subset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The offending value as the user wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What is wrong: lowercase, no trailing period, names the value.
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(severity: Severity, code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            code,
            location: None,
            resource: None,
            field: None,
            value: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn error(code: Code, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn warning(code: Code, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message)
    }

    pub fn info(code: Code, message: impl Into<String>) -> Self {
        Self::new(Severity::Info, code, message)
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn resource(mut self, resource: ResourceRef) -> Self {
        self.resource = Some(resource);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The human form, one line plus an indented hint:
/// `error[IST0101] vs.yaml:12:9: VirtualService ns/name: spec.http[1].mirror.subset: message`
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity, self.code.id())?;
        if let Some(loc) = &self.location {
            write!(f, " {loc}")?;
        }
        f.write_str(":")?;
        if let Some(res) = &self.resource {
            write!(f, " {res}:")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Sort diagnostics into a stable order: by file, line, column, then code and message.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            (
                d.location
                    .as_ref()
                    .map(|l| (l.file.clone(), l.line, l.column)),
                d.code,
                d.message.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
}
