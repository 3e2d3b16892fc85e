;; grow (test-only, hostile): on each message grows its memory one 64 KiB page at a time, as
;; many pages as the payload says (an i64, low 32 bits read), as malloc would; it traps
;; (unreachable) as soon as memory.grow refuses.
(module
  (memory (export "memory") 1)
  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "qh_on_message") (param i32) (param i32) (param $p i32) (param i32) (result i32)
    (local $left i32)
    (local.set $left (i32.load (local.get $p)))
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $left)))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then (unreachable)))
        (local.set $left (i32.sub (local.get $left) (i32.const 1)))
        (br $more)))
    (i32.const 0))
)
