// ESLint: typescript-eslint's recommended rules, plus the module map of DESIGN.md checked mechanically:
// proto <- registry <- rpc <- {coordinator, txapi}, with events (proto only) beneath both; coordinator and
// txapi never import each other.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const forbid = (...mods) => ({
  'no-restricted-imports': [
    'error',
    {
      patterns: mods.map((m) => ({
        group: [`**/${m}`, `**/${m}/**`],
        message: `the module map (docs/architecture.md) forbids this import: ${m} is above or beside this module`,
      })),
    },
  ],
});

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', '.dmtp/', 'proto/gen/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {
        require: 'readonly',
        module: 'writable',
        process: 'readonly',
        console: 'readonly',
        __dirname: 'readonly',
      },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    files: ['proto/**/*.ts'],
    rules: forbid('registry', 'rpc', 'coordinator', 'txapi', 'events', 'examples'),
  },
  { files: ['events/**/*.ts'], rules: forbid('registry', 'rpc', 'coordinator', 'txapi', 'examples') },
  { files: ['registry/**/*.ts'], rules: forbid('rpc', 'coordinator', 'txapi', 'events', 'examples') },
  { files: ['rpc/**/*.ts'], rules: forbid('coordinator', 'txapi', 'events', 'examples') },
  { files: ['coordinator/**/*.ts'], rules: forbid('txapi', 'examples') },
  { files: ['txapi/**/*.ts'], rules: forbid('coordinator', 'examples') },
);
