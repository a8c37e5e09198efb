//! The compiler process (`kpulse __compile`) run as the agent runs it: the real binary, a
//! component on stdin, the artifact on stdout.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a failed step should panic with its error"
)]

use std::path::Path;

use kpulse::runtime::compiler::{ChildError, compile_in_child, engine_config};

fn kpulse() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kpulse"))
}

/// A component with one exported function, in the text format the engine also accepts.
const COMPONENT: &str = r#"
(component
  (core module $m (func (export "answer") (result i32) i32.const 42))
  (core instance $i (instantiate $m))
  (func (export "answer") (result u32) (canon lift (core func $i "answer"))))
"#;

#[test]
fn artifact_from_the_child_loads_into_the_agents_engine() {
    let bytes = compile_in_child(kpulse(), COMPONENT.as_bytes()).unwrap();
    let engine = wasmtime::Engine::new(&engine_config()).unwrap();
    // SAFETY: the bytes come from this crate's own binary, compiled for `engine_config`.
    #[allow(
        unsafe_code,
        reason = "deserializing an artifact the kpulse binary compiled"
    )]
    let component = unsafe { wasmtime::component::Component::deserialize(&engine, &bytes) };
    let component = component.unwrap();
    let exports: Vec<String> = component
        .component_type()
        .exports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    assert_eq!(exports, ["answer"]);
}

#[test]
fn invalid_component_gives_the_compilers_message() {
    match compile_in_child(kpulse(), b"\0asm not really") {
        Err(ChildError::Invalid(message)) => {
            assert!(!message.is_empty(), "no message from the compiler");
        }
        other => panic!("expected an invalid-component error, got {other:?}"),
    }
}

#[test]
fn missing_executable_is_unavailable_not_invalid() {
    let missing = Path::new("/nonexistent/kpulse");
    assert!(matches!(
        compile_in_child(missing, COMPONENT.as_bytes()),
        Err(ChildError::Unavailable(_))
    ));
}

#[test]
fn a_child_that_fails_for_itself_is_a_process_failure() {
    // `false` reads nothing and exits 1: neither an artifact nor a compile error.
    assert!(matches!(
        compile_in_child(Path::new("/bin/false"), COMPONENT.as_bytes()),
        Err(ChildError::Failed(_))
    ));
}
