//! Reading a USMT migration document with roxmltree.

use roxmltree::{Document, Node};

use super::pattern::{Context, Scope, parse_directory, parse_location};
use super::{Action, FileRule, LocationModify, MoveKind, Origin, RuleSet, Warning};
use crate::error::{Error, Result};

/// Top-level directories fleetmig never writes into or migrates from.
pub(crate) const RESERVED_MACHINE_DIRS: &[&str] = &["WINDOWS", "_fleetmig", "StateStore"];

/// Elements that only describe (names, icons, localisation): skipped without a warning.
const METADATA: &[&str] = &[
    "displayName",
    "description",
    "icon",
    "_locDefinition",
    "_locComment",
    "_locTag",
];

pub(super) fn parse(xml: &str, file: &str) -> Result<(RuleSet, Vec<Warning>)> {
    let document = Document::parse(xml).map_err(|error| {
        let pos = error.pos();
        Error::RulesXml {
            file: file.to_owned(),
            line: pos.row,
            column: pos.col,
            message: error.to_string(),
        }
    })?;
    let root = document.root_element();
    let mut parser = Parser {
        document: &document,
        file,
        set: RuleSet::default(),
        warnings: Vec::new(),
    };
    if root.tag_name().name() != "migration" {
        let (line, column) = parser.position(root);
        return Err(Error::RulesXml {
            file: file.to_owned(),
            line,
            column,
            message: format!(
                "root element is <{}>, expected <migration>",
                root.tag_name().name()
            ),
        });
    }
    for child in root.children().filter(Node::is_element) {
        match child.tag_name().name() {
            "component" => parser.component(child, Context::UserAndSystem),
            name if METADATA.contains(&name) => {}
            "library" => parser.warn(child, "<library> is not supported; ignored"),
            "namedElements" => parser.warn(
                child,
                "<namedElements> is not supported; rules referring to them will not match",
            ),
            name => parser.unsupported(child, name),
        }
    }
    parser
        .warnings
        .sort_by_key(|warning| (warning.line, warning.column));
    Ok((parser.set, parser.warnings))
}

struct Parser<'a, 'input> {
    document: &'a Document<'input>,
    file: &'a str,
    set: RuleSet,
    warnings: Vec<Warning>,
}

impl Parser<'_, '_> {
    fn position(&self, node: Node<'_, '_>) -> (u32, u32) {
        let pos = self.document.text_pos_at(node.range().start);
        (pos.row, pos.col)
    }

    fn warn(&mut self, node: Node<'_, '_>, message: impl Into<String>) {
        let (line, column) = self.position(node);
        self.warnings.push(Warning {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn unsupported(&mut self, node: Node<'_, '_>, name: &str) {
        let what = match name {
            "detects" | "detect" | "detection" | "conditions" | "condition" => {
                "is not evaluated; the rules apply as if it matched"
            }
            "environment" | "variable" => {
                "(variable definitions) is not supported; patterns using them report unknown variables"
            }
            "merge" | "addObjects" | "contentModify" | "destinationCleanup" | "externalProcess"
            | "includeAttributes" | "excludeAttributes" | "rename" | "paths" | "plugin" => {
                "is not supported; ignored"
            }
            _ => "is not part of the supported subset; ignored",
        };
        self.warn(node, format!("<{name}> {what}"));
    }

    fn context(&mut self, node: Node<'_, '_>, inherited: Context) -> Context {
        let Some(value) = node.attribute("context") else {
            return inherited;
        };
        if value.eq_ignore_ascii_case("User") {
            Context::User
        } else if value.eq_ignore_ascii_case("System") {
            Context::System
        } else if value.eq_ignore_ascii_case("UserAndSystem") {
            Context::UserAndSystem
        } else {
            self.warn(
                node,
                format!("unknown context {value:?}; treated as UserAndSystem"),
            );
            Context::UserAndSystem
        }
    }

    fn component(&mut self, node: Node<'_, '_>, inherited: Context) {
        let context = self.context(node, inherited);
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "role" => self.role(child, context),
                "rules" => self.rules(child, context),
                "component" => self.component(child, context),
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
    }

    fn role(&mut self, node: Node<'_, '_>, context: Context) {
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "rules" => self.rules(child, context),
                "component" => self.component(child, context),
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
    }

    fn rules(&mut self, node: Node<'_, '_>, inherited: Context) {
        let context = self.context(node, inherited);
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "include" => self.rule(child, Action::Include, context),
                "exclude" => self.rule(child, Action::Exclude, context),
                "unconditionalExclude" => self.rule(child, Action::UnconditionalExclude, context),
                "locationModify" => self.location_modify(child, context),
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
    }

    /// The object sets of an include/exclude element, one [`FileRule`] per file pattern.
    fn rule(&mut self, node: Node<'_, '_>, action: Action, context: Context) {
        if let Some(filter) = node.attribute("filter") {
            self.warn(
                node,
                format!("filter {filter:?} is not evaluated; the rule applies without it"),
            );
        }
        let mut patterns = 0;
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "objectSet" => {
                    for (pattern_node, text, location) in self.object_set(child, context) {
                        patterns += 1;
                        if action == Action::Include
                            && location.scope == Scope::Machine
                            && location.literal_root.first().is_some_and(|top| {
                                RESERVED_MACHINE_DIRS
                                    .iter()
                                    .any(|reserved| reserved.eq_ignore_ascii_case(top))
                            })
                        {
                            self.warn(
                                pattern_node,
                                format!(
                                    "{text:?}: fleetmig never migrates {}; pattern ignored",
                                    location.literal_root[0]
                                ),
                            );
                            continue;
                        }
                        let origin = self.origin(pattern_node);
                        self.set.rules.push(FileRule {
                            action,
                            pattern: text,
                            origin,
                            location,
                        });
                    }
                }
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
        if patterns == 0 {
            self.warn(
                node,
                "rule without any supported file pattern; it does nothing",
            );
        }
    }

    fn origin(&self, node: Node<'_, '_>) -> Origin {
        Origin {
            file: self.file.to_owned(),
            line: self.position(node).0,
        }
    }

    /// The resolved file patterns of an `<objectSet>`: (node, text, location).
    fn object_set<'a, 'input>(
        &mut self,
        node: Node<'a, 'input>,
        context: Context,
    ) -> Vec<(Node<'a, 'input>, String, super::Location)> {
        let mut out = Vec::new();
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "pattern" => {
                    let text = child.text().unwrap_or("").trim().to_owned();
                    match child.attribute("type") {
                        Some(kind) if kind.eq_ignore_ascii_case("File") => {
                            match parse_location(&text, context) {
                                Ok(location) => out.push((child, text, location)),
                                Err(message) => self.warn(child, message),
                            }
                        }
                        Some(kind) if kind.eq_ignore_ascii_case("Registry") => self.warn(
                            child,
                            format!("registry pattern {text:?} is not supported; ignored"),
                        ),
                        Some(kind) => self.warn(
                            child,
                            format!("pattern type {kind:?} is not supported; ignored"),
                        ),
                        None => self.warn(child, "pattern without a type; ignored"),
                    }
                }
                "script" => {
                    let text = child.text().unwrap_or("").trim().to_owned();
                    self.warn(
                        child,
                        format!("script {text:?} is not evaluated; it adds no objects"),
                    );
                }
                "content" => self.warn(child, "<content> filters are not evaluated; ignored"),
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
        out
    }

    fn location_modify(&mut self, node: Node<'_, '_>, context: Context) {
        let Some(script) = node.attribute("script") else {
            self.warn(node, "<locationModify> without a script; ignored");
            return;
        };
        let (scope, kind) = match self.move_kind(script, context) {
            Ok(parsed) => parsed,
            Err(message) => {
                self.warn(
                    node,
                    format!("locationModify {script:?}: {message}; ignored"),
                );
                return;
            }
        };
        let mut patterns = Vec::new();
        for child in node.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "objectSet" => {
                    for (pattern_node, text, location) in self.object_set(child, context) {
                        if location.scope == scope {
                            patterns.push(location);
                        } else {
                            self.warn(
                                pattern_node,
                                format!(
                                    "{text:?} and the locationModify destination are not both \
                                     in the user profile or both outside it; pattern ignored"
                                ),
                            );
                        }
                    }
                }
                name if METADATA.contains(&name) => {}
                name => self.unsupported(child, name),
            }
        }
        if patterns.is_empty() {
            self.warn(
                node,
                "<locationModify> without a usable file pattern; ignored",
            );
            return;
        }
        let origin = self.origin(node);
        self.set.moves.push(LocationModify {
            script: script.to_owned(),
            origin,
            scope,
            kind,
            patterns,
        });
    }

    /// Parses `MigXmlHelper.RelativeMove('from','to')`, `Move('to')`, `ExactMove('to')`.
    fn move_kind(&self, script: &str, context: Context) -> Result<(Scope, MoveKind), String> {
        let (name, args) = parse_call(script)?;
        let function = name.strip_prefix("MigXmlHelper.").unwrap_or(name);
        let dirs: Vec<(Scope, Vec<String>)> = args
            .iter()
            .map(|arg| parse_directory(arg, context))
            .collect::<Result<_, _>>()?;
        let target_allowed = |(scope, to): &(Scope, Vec<String>)| {
            let reserved = *scope == Scope::Machine
                && to.first().is_some_and(|top| {
                    RESERVED_MACHINE_DIRS
                        .iter()
                        .any(|reserved| reserved.eq_ignore_ascii_case(top))
                });
            if reserved {
                Err(format!("fleetmig never writes into {}", to[0]))
            } else {
                Ok(())
            }
        };
        match (function, dirs.as_slice()) {
            ("RelativeMove", [from, to]) => {
                if from.0 != to.0 {
                    return Err(
                        "source and destination must both be in the user profile or both \
                         outside it"
                            .to_owned(),
                    );
                }
                target_allowed(to)?;
                Ok((
                    from.0,
                    MoveKind::Relative {
                        from: from.1.clone(),
                        to: to.1.clone(),
                    },
                ))
            }
            ("Move", [to]) => {
                target_allowed(to)?;
                Ok((to.0, MoveKind::Move { to: to.1.clone() }))
            }
            ("ExactMove", [to]) => {
                target_allowed(to)?;
                if to.1.is_empty() {
                    return Err("ExactMove needs a file path".to_owned());
                }
                Ok((to.0, MoveKind::Exact { to: to.1.clone() }))
            }
            ("RelativeMove" | "Move" | "ExactMove", _) => {
                Err(format!("{function} called with {} arguments", args.len()))
            }
            _ => Err(format!("{name} is not supported")),
        }
    }
}

/// Splits `Name('a', "b")` into the name and its string arguments.
fn parse_call(script: &str) -> Result<(&str, Vec<String>), String> {
    let script = script.trim();
    let (name, rest) = script
        .split_once('(')
        .ok_or_else(|| "not a function call".to_owned())?;
    let inner = rest
        .trim_end()
        .strip_suffix(')')
        .ok_or_else(|| "missing ')'".to_owned())?;
    let mut args = Vec::new();
    let mut chars = inner.trim().chars().peekable();
    while chars.peek().is_some() {
        let quote = chars.next().filter(|c| *c == '\'' || *c == '"');
        let Some(quote) = quote else {
            return Err("arguments must be quoted strings".to_owned());
        };
        let mut arg = String::new();
        loop {
            match chars.next() {
                Some(c) if c == quote => break,
                Some(c) => arg.push(c),
                None => return Err("unterminated string argument".to_owned()),
            }
        }
        args.push(arg);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(other) => return Err(format!("unexpected {other:?} between arguments")),
        }
    }
    Ok((name.trim(), args))
}
