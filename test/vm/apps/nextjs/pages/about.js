// Pre-rendered at build time (static): proves `next build` ran.
export default function About() {
  return <p>built-by-next-build</p>;
}
