//! `cargo run -p uniffi-bindgen -- generate --library target/release/libchatvault.so --language
//! python --out-dir DIR`: generates the bindings from the compiled library.
fn main() {
    uniffi::uniffi_bindgen_main()
}
