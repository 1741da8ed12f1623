//! Topic templates: a topic becomes (kind, source id, payload profile).
//!
//! A template is a topic with named segments, such as `V2X/RSU/{source_id}/RSM/UP/{profile?}`.
//! `{source_id}` captures the source, `{profile}` the payload profile (a trailing `?` makes the
//! segment optional), `{kind}` the kind, and any other `{name}` matches one segment and is
//! ignored. Captured segments are never used as paths until they pass [`is_safe_identifier`].

use serde::{Deserialize, Serialize};

/// One routing rule as written in config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTemplate {
    /// The topic template.
    pub template: String,
    /// Kind of the messages; required unless the template captures `{kind}`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Payload profile when the template does not capture one (or the optional segment is
    /// absent). Default `std`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Kinds that may also arrive on this topic: when `kind` cannot decode a message, the
    /// first of these with a profile whose `detect` paths are all present decodes it (a
    /// radar's track frame sent on its FLOW topic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_kinds: Vec<String>,
}

/// What a topic resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'t> {
    pub kind: &'t str,
    /// `None` when the template has no `{source_id}`; the profile may then take it from the
    /// payload.
    pub source_id: Option<&'t str>,
    pub profile: &'t str,
    /// The profile was named (by the topic or the route's `profile`), not defaulted: the
    /// decoder then does not look for another profile that fits better.
    pub profile_named: bool,
    /// Kinds to try when `kind` cannot decode the message (see [`RouteTemplate`]).
    pub fallback_kinds: &'t [String],
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("topic matches no route template")]
    NoMatch,
    #[error("source id segment is not a safe identifier")]
    UnsafeSourceId,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid route template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    SourceId,
    Profile,
    Kind,
    Any,
}

#[derive(Debug, Clone)]
struct Compiled {
    segments: Vec<Segment>,
    /// Per segment, the id of its literal in [`Router::literals`] (or [`NOT_LITERAL`]).
    literal_ids: Vec<u16>,
    /// The last segment may be absent.
    last_optional: bool,
    kind: Option<String>,
    profile: String,
    profile_named: bool,
    fallback_kinds: Vec<String>,
}

/// All templates, compiled once; matching does no allocation.
#[derive(Debug, Clone)]
pub struct Router {
    separator: String,
    routes: Vec<Compiled>,
    /// Per segment position, every literal that a template has there, numbered. A topic's
    /// segments are looked up once, and templates are then matched by comparing numbers: the
    /// built-in set has some 50 templates, and string compares against each cost more than
    /// the rest of routing.
    literals: Vec<crate::FastMap<String, u16>>,
}

/// A matched template and the byte ranges of the topic's captured segments.
#[derive(Debug, Clone)]
struct Spans {
    template: usize,
    kind: Option<std::ops::Range<usize>>,
    source_id: Option<std::ops::Range<usize>>,
    profile: Option<std::ops::Range<usize>>,
}

/// Topics routed lately and what they matched, for [`Router::route_cached`]; one per decoder
/// (it belongs to one router's templates). Holds at most [`RouteCache::CAPACITY`] topics and
/// starts over when full.
#[derive(Debug, Default)]
pub struct RouteCache {
    topics: crate::FastMap<Box<str>, Result<Spans, RouteError>>,
}

impl RouteCache {
    /// Enough for every topic of a zone of some 10,000 devices (a few megabytes).
    pub const CAPACITY: usize = 1 << 16;
}

/// A segment that is no literal (it captures, or is `{any}`).
const NOT_LITERAL: u16 = u16::MAX;
/// A topic segment that is no template's literal at its position.
const NO_TEMPLATE_LITERAL: u16 = u16::MAX - 1;

/// Built-in templates: OpenV2X upper case, the `v2x/v1` lower case convention, radar, vehicles.
pub fn builtin_routes() -> Vec<RouteTemplate> {
    let r = |template: &str, kind: &str| RouteTemplate {
        template: template.into(),
        kind: Some(kind.into()),
        profile: None,
        fallback_kinds: Vec::new(),
    };
    // A radar feed topic on which some radars (or gateways) also send their track frames.
    let radar = |template: &str, kind: &str| RouteTemplate {
        fallback_kinds: vec!["radar_target".into()],
        ..r(template, kind)
    };
    vec![
        // OpenV2X: V2X/RSU/{esn}/{RSM|RSI|SPAT}/UP[/VENDOR]
        r("V2X/RSU/{source_id}/RSM/UP/{profile?}", "rsm_participant"),
        r("V2X/RSU/{source_id}/SPAT/UP/{profile?}", "spat_phase"),
        r("V2X/RSU/{source_id}/RSI/UP/{profile?}", "rsi_event"),
        r("V2X/RSU/{source_id}/BSM/UP/{profile?}", "bsm"),
        r("V2X/RSU/{source_id}/MAP/UP/{profile?}", "map_lane"),
        r("V2X/RSU/{source_id}/PSM/UP/{profile?}", "psm"),
        r("V2X/RSU/{source_id}/SSM/UP/{profile?}", "ssm_object"),
        r("V2X/RSU/{source_id}/SDSM/UP/{profile?}", "ssm_object"),
        r("V2X/RSU/{source_id}/VIR/UP/{profile?}", "vir"),
        // OpenV2X device status: the source comes from the payload.
        r("V2X/RSU/HB/UP", "device_status"),
        r("V2X/RSU/INFO/UP", "device_status"),
        r("V2X/RSU/BaseINFO/UP", "device_status"),
        r("V2X/RSU/RunningInfo/UP", "device_status"),
        r("V2X/RSU/{source_id}/HB/UP/{profile?}", "device_status"),
        // Radar track frames.
        r("V2X/RADAR/{source_id}/TRACK/UP/{profile?}", "radar_target"),
        radar("V2X/RADAR/{source_id}/CROSS/UP/{profile?}", "radar_pass"),
        radar("V2X/RADAR/{source_id}/FLOW/UP/{profile?}", "radar_flow"),
        radar("V2X/RADAR/{source_id}/STATUS/UP/{profile?}", "radar_queue"),
        radar("V2X/RADAR/{source_id}/EVENT/UP/{profile?}", "radar_event"),
        // Vehicles.
        r("V2X/OBU/{source_id}/BSM/UP/{profile?}", "bsm"),
        r("V2X/OBU/{source_id}/PSM/UP/{profile?}", "psm"),
        r("V2X/OBU/{source_id}/SSM/UP/{profile?}", "ssm_object"),
        r("V2X/OBU/{source_id}/VIR/UP/{profile?}", "vir"),
        r("V2X/VEH/{source_id}/STATE/UP/{profile?}", "vehicle_state"),
        r(
            "V2X/VEH/{source_id}/OBJECTS/UP/{profile?}",
            "vehicle_object",
        ),
        // Lower case commercial cloud convention.
        r(
            "v2x/v1/rsu/{source_id}/rsm/up/{profile?}",
            "rsm_participant",
        ),
        r("v2x/v1/rsu/{source_id}/spat/up/{profile?}", "spat_phase"),
        r("v2x/v1/rsu/{source_id}/rsi/up/{profile?}", "rsi_event"),
        r("v2x/v1/rsu/{source_id}/bsm/up/{profile?}", "bsm"),
        r("v2x/v1/rsu/{source_id}/map/up/{profile?}", "map_lane"),
        r("v2x/v1/rsu/{source_id}/psm/up/{profile?}", "psm"),
        r("v2x/v1/rsu/{source_id}/ssm/up/{profile?}", "ssm_object"),
        r("v2x/v1/rsu/{source_id}/vir/up/{profile?}", "vir"),
        r("v2x/v1/rsu/{source_id}/hb/up/{profile?}", "device_status"),
        r("v2x/v1/obu/{source_id}/bsm/up/{profile?}", "bsm"),
        r("v2x/v1/obu/{source_id}/psm/up/{profile?}", "psm"),
        r(
            "v2x/v1/radar/{source_id}/track/up/{profile?}",
            "radar_target",
        ),
        radar("v2x/v1/radar/{source_id}/cross/up/{profile?}", "radar_pass"),
        radar("v2x/v1/radar/{source_id}/flow/up/{profile?}", "radar_flow"),
        radar(
            "v2x/v1/radar/{source_id}/status/up/{profile?}",
            "radar_queue",
        ),
        radar(
            "v2x/v1/radar/{source_id}/event/up/{profile?}",
            "radar_event",
        ),
        r(
            "v2x/v1/veh/{source_id}/state/up/{profile?}",
            "vehicle_state",
        ),
        r(
            "v2x/v1/veh/{source_id}/objects/up/{profile?}",
            "vehicle_object",
        ),
    ]
}

impl Router {
    pub fn new(separator: &str, templates: &[RouteTemplate]) -> Result<Router, TemplateError> {
        let mut routes: Vec<Compiled> = templates
            .iter()
            .map(|t| compile(separator, t))
            .collect::<Result<_, _>>()?;
        let mut literals: Vec<crate::FastMap<String, u16>> = vec![Default::default(); MAX_SEGMENTS];
        for (c, t) in routes.iter_mut().zip(templates) {
            for (seg, ids) in c.segments.iter().zip(&mut literals) {
                let id = match seg {
                    Segment::Literal(lit) => match ids.get(lit) {
                        Some(&id) => id,
                        None => {
                            let id = u16::try_from(ids.len())
                                .ok()
                                .filter(|&id| id < NO_TEMPLATE_LITERAL)
                                .ok_or_else(|| TemplateError {
                                    template: t.template.clone(),
                                    reason: "too many different literals at one position".into(),
                                })?;
                            ids.insert(lit.clone(), id);
                            id
                        }
                    },
                    _ => NOT_LITERAL,
                };
                c.literal_ids.push(id);
            }
        }
        Ok(Router {
            separator: separator.to_string(),
            routes,
            literals,
        })
    }

    /// Resolves a topic. The first matching template wins.
    pub fn route<'t>(&'t self, topic: &'t str) -> Result<Route<'t>, RouteError> {
        self.spans(topic).map(|s| self.apply(topic, &s))
    }

    /// As [`Router::route`], remembering the answer for the topic in `cache`: devices publish
    /// on the same few topics again and again, and a hash of the whole topic costs a tenth
    /// of matching it against the templates.
    pub fn route_cached<'t>(
        &'t self,
        topic: &'t str,
        cache: &mut RouteCache,
    ) -> Result<Route<'t>, RouteError> {
        let spans = match cache.topics.get(topic) {
            Some(known) => known.clone(),
            None => {
                let spans = self.spans(topic);
                if cache.topics.len() >= RouteCache::CAPACITY {
                    // (Bounded: a flood of distinct topics costs the matching, never memory.)
                    cache.topics.clear();
                }
                cache.topics.insert(topic.into(), spans.clone());
                spans
            }
        };
        spans.map(|s| self.apply(topic, &s))
    }

    /// Which template a topic matches, and where its captured segments are.
    fn spans(&self, topic: &str) -> Result<Spans, RouteError> {
        // Split once; no template is longer than MAX_SEGMENTS, so a longer topic matches none.
        let mut parts: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
        let n = match self.separator.as_bytes() {
            [b] if b.is_ascii() => fill(topic.split(*b as char), &mut parts),
            _ => fill(topic.split(self.separator.as_str()), &mut parts),
        }
        .ok_or(RouteError::NoMatch)?;
        let parts = &parts[..n];
        let mut topic_ids = [NO_TEMPLATE_LITERAL; MAX_SEGMENTS];
        for ((id, part), ids) in topic_ids.iter_mut().zip(parts).zip(&self.literals) {
            if let Some(&known) = ids.get(*part) {
                *id = known;
            }
        }
        // A part's place in the topic (parts are slices of it).
        let span = |part: &str| {
            let start = part.as_ptr() as usize - topic.as_ptr() as usize;
            start..start + part.len()
        };
        for (template, c) in self.routes.iter().enumerate() {
            let len = c.segments.len();
            if !(n == len || (c.last_optional && n + 1 == len)) {
                continue;
            }
            let literals_match = c
                .literal_ids
                .iter()
                .zip(&topic_ids[..n])
                .all(|(&want, &got)| want == NOT_LITERAL || want == got);
            if !literals_match {
                continue;
            }
            let mut spans = Spans {
                template,
                kind: None,
                source_id: None,
                profile: None,
            };
            for (seg, part) in c.segments.iter().zip(parts) {
                match seg {
                    Segment::Literal(_) | Segment::Any => {}
                    Segment::SourceId => spans.source_id = Some(span(part)),
                    Segment::Profile => spans.profile = Some(span(part)),
                    Segment::Kind => spans.kind = Some(span(part)),
                }
            }
            if let Some(id) = &spans.source_id
                && !is_safe_identifier(&topic[id.clone()])
            {
                return Err(RouteError::UnsafeSourceId);
            }
            return Ok(spans);
        }
        Err(RouteError::NoMatch)
    }

    fn apply<'t>(&'t self, topic: &'t str, s: &Spans) -> Route<'t> {
        let c = &self.routes[s.template];
        Route {
            kind: match &s.kind {
                Some(k) => &topic[k.clone()],
                None => c.kind.as_deref().unwrap_or(""),
            },
            source_id: s.source_id.clone().map(|r| &topic[r]),
            profile: match &s.profile {
                Some(p) => &topic[p.clone()],
                None => &c.profile,
            },
            profile_named: s.profile.is_some() || c.profile_named,
            fallback_kinds: &c.fallback_kinds,
        }
    }

    /// MQTT subscription filters covering every template. With a separator other than `/` the
    /// whole topic is one MQTT level, so only `#` covers it.
    pub fn subscription_filters(&self) -> Vec<String> {
        if self.separator != "/" {
            return vec!["#".into()];
        }
        let mut filters: Vec<String> = vec!["V2X/#".into(), "v2x/#".into()];
        for c in &self.routes {
            let mut f = Vec::new();
            for (i, seg) in c.segments.iter().enumerate() {
                if c.last_optional && i + 1 == c.segments.len() {
                    f.push("#".to_string());
                    break;
                }
                f.push(match seg {
                    Segment::Literal(l) => l.clone(),
                    _ => "+".into(),
                });
            }
            let filter = f.join("/");
            let covered = filters
                .iter()
                .any(|existing| filter_covers(existing, &filter));
            if !covered {
                filters.push(filter);
            }
        }
        filters
    }
}

/// Most segments a template may have.
const MAX_SEGMENTS: usize = 16;

/// Fills `out` with the segments; `None` when there are more than it holds.
fn fill<'t>(segments: impl Iterator<Item = &'t str>, out: &mut [&'t str]) -> Option<usize> {
    let mut n = 0;
    for s in segments {
        *out.get_mut(n)? = s;
        n += 1;
    }
    Some(n)
}

/// Whether MQTT filter `a` matches every topic that `b` matches (only the cases we produce).
fn filter_covers(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if let Some(prefix) = a.strip_suffix("#") {
        return b.starts_with(prefix) && !prefix[..prefix.len().saturating_sub(1)].contains('+');
    }
    false
}

fn compile(separator: &str, t: &RouteTemplate) -> Result<Compiled, TemplateError> {
    let err = |reason: &str| TemplateError {
        template: t.template.clone(),
        reason: reason.into(),
    };
    let mut segments = Vec::new();
    let mut last_optional = false;
    let raw: Vec<&str> = t.template.split(separator).collect();
    for (i, part) in raw.iter().enumerate() {
        let seg = if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, optional) = match name.strip_suffix('?') {
                Some(n) => (n, true),
                None => (name, false),
            };
            if optional {
                if i + 1 != raw.len() {
                    return Err(err("only the last segment may be optional"));
                }
                last_optional = true;
            }
            match name {
                "source_id" => Segment::SourceId,
                "profile" => Segment::Profile,
                "kind" => Segment::Kind,
                "" => return Err(err("empty segment name")),
                _ => Segment::Any,
            }
        } else {
            if part.contains(['{', '}', '+', '#']) {
                return Err(err("literal segments may not contain { } + #"));
            }
            Segment::Literal(part.to_string())
        };
        segments.push(seg);
    }
    if segments.len() > MAX_SEGMENTS {
        return Err(err("more than 16 segments"));
    }
    let captures_kind = segments.contains(&Segment::Kind);
    if t.kind.is_none() && !captures_kind {
        return Err(err("needs `kind = ...` or a {kind} segment"));
    }
    Ok(Compiled {
        segments,
        literal_ids: Vec::new(), // numbered by `Router::new`, which sees every template
        last_optional,
        kind: t.kind.clone(),
        profile: t.profile.clone().unwrap_or_else(|| "std".into()),
        profile_named: t.profile.is_some(),
        fallback_kinds: t.fallback_kinds.clone(),
    })
}

/// A source id, profile or collector id that may safely appear in logs and paths:
/// 1 to 64 bytes of `A-Z a-z 0-9 _ . -`, starting with a letter or digit (so never `.`/`..`).
pub fn is_safe_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Router {
        Router::new("/", &builtin_routes()).unwrap()
    }

    #[test]
    fn openv2x_std_and_vendor_profiles() {
        let r = builtin();
        let std = r.route("V2X/RSU/R328328/RSM/UP").unwrap();
        assert_eq!(std.kind, "rsm_participant");
        assert_eq!(std.source_id, Some("R328328"));
        assert_eq!(std.profile, "std");
        let vendor = r.route("V2X/RSU/R328328/RSM/UP/DAWNLINE").unwrap();
        assert_eq!(vendor.profile, "DAWNLINE");
    }

    #[test]
    fn lower_case_and_radar() {
        let r = builtin();
        let bsm = r.route("v2x/v1/rsu/esn01/bsm/up").unwrap();
        assert_eq!((bsm.kind, bsm.source_id), ("bsm", Some("esn01")));
        let radar = r.route("V2X/RADAR/N22W75HMBLD/TRACK/UP").unwrap();
        assert_eq!(radar.kind, "radar_target");
        let hb = r.route("V2X/RSU/HB/UP").unwrap();
        assert_eq!(
            (hb.kind, hb.source_id, hb.profile),
            ("device_status", None, "std")
        );
    }

    #[test]
    fn literals_are_told_apart_by_position_and_the_first_template_wins() {
        let t = |template: &str, kind: &str| RouteTemplate {
            template: template.into(),
            kind: Some(kind.into()),
            profile: None,
            fallback_kinds: Vec::new(),
        };
        let r = Router::new(
            "/",
            &[
                t("a/{source_id}/x", "first"),
                t("a/b/{source_id}", "second"),
                t("{source_id}/a/x", "third"),
            ],
        )
        .unwrap();
        // `a/b/x` fits the first two; declared order decides.
        assert_eq!(r.route("a/b/x").unwrap().kind, "first");
        assert_eq!(r.route("a/b/y").unwrap().kind, "second");
        // `a` at position 1 is not the `a` of position 0.
        assert_eq!(r.route("z/a/x").unwrap().kind, "third");
        assert_eq!(r.route("a/a/y"), Err(RouteError::NoMatch));
        assert_eq!(r.route("x/b/x"), Err(RouteError::NoMatch));
    }

    /// The cache answers as matching does, for every topic shape (captured kind and profile,
    /// defaulted profile, errors), the first time and again, and never holds more topics than
    /// its capacity.
    #[test]
    fn cached_routes_are_the_routes_and_the_cache_is_bounded() {
        let r = builtin();
        let captured = Router::new(
            ".",
            &[RouteTemplate {
                template: "v2x.{kind}.{source_id}.{profile?}".into(),
                kind: None,
                profile: None,
                fallback_kinds: Vec::new(),
            }],
        )
        .unwrap();
        let mut cache = RouteCache::default();
        let mut captured_cache = RouteCache::default();
        for _ in 0..2 {
            for topic in [
                "V2X/RSU/R328328/RSM/UP",
                "V2X/RSU/R328328/RSM/UP/HUALI",
                "v2x/v1/rsu/esn01/bsm/up",
                "V2X/RSU/HB/UP",
                "V2X/RSU/x/NOPE/UP",
                "V2X/RSU/../RSM/UP",
                "",
            ] {
                assert_eq!(r.route_cached(topic, &mut cache), r.route(topic), "{topic}");
            }
            for topic in ["v2x.bsm.car-1", "v2x.rsm.rsu-1.huali", "v2x.bsm"] {
                let got = captured.route_cached(topic, &mut captured_cache);
                assert_eq!(got, captured.route(topic), "{topic}");
            }
        }
        let got = captured.route_cached("v2x.rsm.rsu-1.huali", &mut captured_cache);
        let want = Route {
            kind: "rsm",
            source_id: Some("rsu-1"),
            profile: "huali",
            profile_named: true,
            fallback_kinds: &[],
        };
        assert_eq!(got, Ok(want));
        for i in 0..=RouteCache::CAPACITY {
            let topic = format!("V2X/OBU/car-{i}/BSM/UP");
            let got = r.route_cached(&topic, &mut cache).unwrap().source_id;
            assert_eq!(got, Some(&topic[8..topic.len() - 7]));
            assert!(cache.topics.len() <= RouteCache::CAPACITY);
        }
    }

    #[test]
    fn unknown_topics_do_not_match() {
        let r = builtin();
        assert_eq!(r.route("V2X/RSU/x/NOPE/UP"), Err(RouteError::NoMatch));
        assert_eq!(r.route("V2X/RSU/x/RSM/UP/a/b"), Err(RouteError::NoMatch));
        assert_eq!(r.route("other"), Err(RouteError::NoMatch));
    }

    #[test]
    fn hostile_source_ids_are_refused() {
        let r = builtin();
        for id in [
            "..",
            ".hidden",
            "a\u{0}b",
            "a b",
            "é",
            &"x".repeat(65),
            "-x",
        ] {
            let topic = format!("V2X/RSU/{id}/RSM/UP");
            assert_eq!(r.route(&topic), Err(RouteError::UnsafeSourceId), "{id:?}");
        }
    }

    #[test]
    fn dot_separator_and_kind_capture() {
        let t = RouteTemplate {
            template: "v2x.{kind}.{source_id}".into(),
            kind: None,
            profile: Some("float".into()),
            fallback_kinds: Vec::new(),
        };
        let r = Router::new(".", &[t]).unwrap();
        let got = r.route("v2x.bsm.car-7").unwrap();
        assert_eq!(
            (got.kind, got.source_id, got.profile),
            ("bsm", Some("car-7"), "float")
        );
        assert_eq!(r.subscription_filters(), vec!["#".to_string()]);
    }

    #[test]
    fn filters_cover_templates() {
        let filters = builtin().subscription_filters();
        assert_eq!(filters, vec!["V2X/#".to_string(), "v2x/#".to_string()]);
        let t = RouteTemplate {
            template: "fleet/{source_id}/bsm".into(),
            kind: Some("bsm".into()),
            profile: None,
            fallback_kinds: Vec::new(),
        };
        let r = Router::new("/", &[t]).unwrap();
        assert!(
            r.subscription_filters()
                .contains(&"fleet/+/bsm".to_string())
        );
    }

    #[test]
    fn bad_templates_are_rejected() {
        let bad = |t: &str| RouteTemplate {
            template: t.into(),
            kind: Some("bsm".into()),
            profile: None,
            fallback_kinds: Vec::new(),
        };
        assert!(Router::new("/", &[bad("a/{x?}/b")]).is_err());
        assert!(Router::new("/", &[bad("a/+/b")]).is_err());
        let no_kind = RouteTemplate {
            template: "a/{source_id}".into(),
            kind: None,
            profile: None,
            fallback_kinds: Vec::new(),
        };
        assert!(Router::new("/", &[no_kind]).is_err());
    }
}
